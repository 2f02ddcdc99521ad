"""``slurm-llm router`` announces its address only once it listens: a script that waits for
the "Routing ..." line and then sends its first request must not be refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_router_answers_as_soon_as_it_says_it_routes(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SLURM_LLM_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "slurm_llm", "router", "--port", str(port),
         "--backend", "m=http://127.0.0.1:9", "--probe-interval", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    ) as router:  # fmt: skip
        try:
            assert router.stdout is not None
            said = [router.stdout.readline()]
            while said[-1] and not said[-1].startswith("Routing"):
                said.append(router.stdout.readline())
            assert said[-1].startswith(f"Routing m=http://127.0.0.1:9 on http://127.0.0.1:{port}")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                assert answer.status == 200  # the first try: no retry, no wait
        finally:
            router.terminate()
            router.wait(timeout=30)
