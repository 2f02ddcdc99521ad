"""Where the router's time goes, under the overhead benchmark's two loads.

The mock upstream and one router (``router_overhead.py``'s settings) run while py-spy samples
the router: first under wrk's non-streamed closed loop, then under 100 concurrent streams.
For each load it saves py-spy's collapsed stacks (``.txt``, for any flame-graph tool) and a
Markdown table of the functions that took the most samples, on their own (self) and with what
they called (inclusive). py-spy samples a running process from outside, so the router runs
unchanged; C code (uvloop, the kernel's send) is counted in the Python frame that called it.

    python benchmarks/router_profile.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, describe, machine_info
from _servers import answers, background
from router_overhead import WRK_SCRIPT, loadgen, raise_open_files, router_process, wrk

from slurm_llm import _debian
from slurm_llm.node._ports import lease_port

HERE = Path(__file__).parent
SITE = re.compile(r"^.*?/(site-packages|python3\.\d+)/")


def record(pid: int, seconds: float, out: Path) -> None:
    """py-spy's collapsed stacks of ``pid`` for ``seconds``, into ``out``."""
    spy = Path(sys.executable).parent / "py-spy"
    subprocess.run(
        [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
         "--format", "raw", "--output", str(out), "--nonblocking"],
        check=True, capture_output=True, timeout=seconds + 60,
    )  # fmt: skip


def table(stacks: Path, rows: int) -> str:
    """The functions with the most samples, self and inclusive, as Markdown."""
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = [SITE.sub("", re.sub(r":\d+\)$", ")", f)) for f in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            within[frame] += samples
    lines = [f"{total} samples.", "", "| self | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} % | `{f}` |" for f, n in own.most_common(rows)]
    lines += ["", "| inclusive | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} % | `{f}` |" for f, n in within.most_common(rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="sampled per load")
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    raise_open_files()
    _debian.ensure_packages(("wrk",), ("wrk",), RuntimeError, "this benchmark")
    info = machine_info(("slurm-llm", "aiohttp", "uvloop", "httptools", "py-spy"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    sections = [f"# Router profile, {stamp}", "", f"Machine: {describe(info)}.", ""]
    cli = Path(sys.executable).parent / "slurm-llm"
    with tempfile.TemporaryDirectory(prefix="router-profile-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        mock_port, router_port = (stack.enter_context(lease_port("127.0.0.1")).port
                                  for _ in range(2))  # fmt: skip
        mock = f"http://127.0.0.1:{mock_port}"
        stack.enter_context(background(
            [sys.executable, str(HERE / "_mock_upstream.py"), "--port", str(mock_port),
             "--chunks", "8", "--chunk-delay", "0.05"],
            answers(f"{mock}/health"), work / "mock.log",
        ))  # fmt: skip
        router = stack.enter_context(
            router_process(
                [str(cli)], router_port, ["--backend", f"mock={mock}"], work / "router.log"
            )
        )
        url = f"http://127.0.0.1:{router_port}/v1/chat/completions"
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        loads: dict[str, Callable[[], dict[str, Any]]] = {
            "plain": lambda: dict(wrk(url, script, int(args.seconds) + 4, 64)),
            "streamed": lambda: loadgen(
                "streams",
                url,
                args.seconds + 60,
                concurrency=100,
                duration=args.seconds + 4,
                chunks=8,
            ),
        }
        for name, load in loads.items():
            result: dict[str, Any] = {}
            driver = threading.Thread(target=lambda: result.update(load()))  # noqa: B023
            driver.start()
            time.sleep(2)  # past the load's start
            stacks = RESULTS / f"router_profile-{stamp}-{name}.txt"
            record(router.pid, args.seconds, stacks)
            driver.join()
            measured = (
                f"{result['req_s']:.0f} req/s"
                if "req_s" in result
                else f"{len(result.get('ttft', []))} streams"
            )
            sections += [f"## {name} ({measured} while sampled)", "", table(stacks, args.rows), ""]
    out = RESULTS / f"router_profile-{stamp}.md"
    out.write_text("\n".join(sections))
    print(out.read_text())
    print(f"Saved {out}")


if __name__ == "__main__":
    main()
