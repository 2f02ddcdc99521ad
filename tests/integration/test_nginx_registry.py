"""nginx in front of real llama.cpp replicas, kept in step with the registry: it streams,
reloads as replicas come while requests are in flight without failing one, and skips a dead
replica."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from slurm_llm import Deployment
from slurm_llm.nginx import NginxConfig, NginxServer, follow_registry, registry_upstreams
from slurm_llm.node._ports import lease_port
from tests.integration.helpers import deploy_smollm2, openai_client, post, streamed_pieces

pytestmark = [pytest.mark.nginx, pytest.mark.llamacpp]


@pytest.fixture
def port() -> Iterator[int]:
    with lease_port("127.0.0.1") as lease:
        yield lease.port


def upstream_addresses(prefix: Path) -> set[str]:
    """The replicas nginx's access log says answered."""
    time.sleep(1.2)  # the log is flushed every second
    lines = (prefix / "logs" / "access.log").read_text().splitlines()
    return {word.split("=", 1)[1] for line in lines for word in line.split()
            if word.startswith("upstream=") and word != "upstream=-"}  # fmt: skip


def test_nginx_streams_from_the_registrys_replicas(
    smollm2_llamacpp: Deployment, tmp_path: Path, port: int
) -> None:
    upstreams = registry_upstreams(deployment="shared-smollm2")
    assert list(upstreams) == ["smollm2"] and len(upstreams["smollm2"]) == 2
    with NginxServer(NginxConfig(upstreams, tmp_path / "nginx", port=port)) as server:
        assert len(streamed_pieces(f"{server.url}/smollm2", "smollm2")) > 3


def test_replicas_that_come_and_die_under_load_fail_no_request(
    slurm_llm_home: Path, tmp_path: Path, port: int
) -> None:
    prefix = tmp_path / "nginx"
    with deploy_smollm2("nginx-follow", replicas=1, max_restarts=0) as deployment:
        config = NginxConfig(registry_upstreams(deployment="nginx-follow"), prefix, port=port)
        with NginxServer(config) as server:
            stop = threading.Event()
            follower = threading.Thread(
                target=follow_registry, args=(server,),
                kwargs={"deployment": "nginx-follow", "interval_s": 0.2, "stop": stop},
            )  # fmt: skip
            follower.start()
            failures: list[Exception] = []

            # A connection per request (urllib's way): every registry change reloads nginx,
            # whose old workers close their idle keep-alive connections, and a client that
            # sends on one at that moment sees it closed before any answer (HTTP/1.1's
            # keep-alive race, which the OpenAI SDK retries by default). This test is about
            # requests nginx accepted, so it keeps that race out rather than retrying, which
            # would also hide a 502.
            def ask(n: int) -> None:
                try:
                    body = {"model": "smollm2", "prompt": f"{n},", "max_tokens": 8}
                    reply = post(f"{server.url}/smollm2/v1/completions", body)
                    if reply.status != 200:
                        failures.append(RuntimeError(f"HTTP {reply.status}: {reply.body}"))
                except Exception as exc:  # every failure is collected and reported
                    failures.append(exc)

            try:
                with ThreadPoolExecutor(4) as pool:
                    first = [pool.submit(ask, n) for n in range(40)]
                    deployment.scale(2).wait_ready(timeout=60, progress=False)
                    deadline = time.monotonic() + 10
                    while len(server.config.upstreams["smollm2"]) < 2:
                        assert time.monotonic() < deadline, "nginx never took the new replica"
                        time.sleep(0.1)
                    second = [pool.submit(ask, n) for n in range(40)]
                    for future in first + second:
                        future.result()
                assert failures == []
                both = {r.url.removeprefix("http://") for r in deployment.records()}
                assert upstream_addresses(prefix) >= both, "the new replica got requests"

                victim = deployment.records()[0]
                os.kill(victim.engine_pid, signal.SIGKILL)
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(ask, range(20)))
                assert failures == [], "requests to the dead replica went to the other one"
            finally:
                stop.set()
                follower.join(10)


def shell(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_the_cli_runs_and_reloads_nginx(
    smollm2_llamacpp: Deployment, tmp_path: Path, port: int
) -> None:
    prefix = tmp_path / "nginx"
    cli = [sys.executable, "-m", "slurm_llm", "nginx"]
    run = subprocess.Popen(
        [*cli, "run", "--prefix", str(prefix), "--port", str(port),
         "--deployment", "shared-smollm2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert run.stdout is not None
        assert "nginx serves on" in run.stdout.readline()
        url = f"http://127.0.0.1:{port}/smollm2"
        assert openai_client(url).completions.create(model="smollm2", prompt="1,", max_tokens=2)
        reload = shell([*cli, "reload", "--prefix", str(prefix)])
        assert reload.returncode == 0, reload.stderr
        assert "Reloaded" in reload.stdout
        other = str(tmp_path / "other")
        rendered = shell([*cli, "render", "--prefix", other, "--deployment", "shared-smollm2"])
        assert rendered.returncode == 0 and "checked with nginx -t" in rendered.stdout
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(20)
        if run.stdout is not None:
            run.stdout.close()
    missing = shell([*cli, "reload", "--prefix", str(tmp_path / "none")])
    assert missing.returncode == 1 and "slurm-llm nginx run" in missing.stderr
