"""What the router itself costs, next to nginx, against an upstream that costs nothing.

vllm-router's overhead harness, on one machine: a mock OpenAI upstream that answers at once
(``_mock_upstream.py``), and the same load sent three ways in one run:
  direct   to the mock;
  router   through ``slurm-llm router --backend mock=URL`` (its own process, one worker);
  router-x2 the same with ``--workers 2`` (two processes on one port, ``SO_REUSEPORT``);
  nginx    through slurm-llm's nginx front end (``slurm_llm.nginx``, one worker process);
  bare     through ``_bare_proxy.py``: aiohttp's server and the router's client and nothing
           else, the floor under the router in this design (what its features cost is the
           difference to it; what aiohttp and Python cost, its difference to nginx).
The differences to direct are what each proxy adds. Phases, each bounded in time:
  1. streams: 100 concurrent streamed chat requests (closed loop, aiohttp on uvloop in its own
     process); TTFT and end-to-end p50/p99, paths interleaved round by round; measured twice:
       spread    the clients' first requests spread evenly over one stream's length, so
                 requests arrive steadily, as from many independent users (the goals);
       together  all clients start at once; every stream lasts as long, so they stay in
                 step: waves of 100 requests at the same instant, every stream's length. TTFT
                 p99 is then the time to take in a whole wave, a burst test;
  2. throughput: non-streamed requests, closed loop, with wrk (C, so the load generator takes
     the least CPU from the proxies); max requests/s through each path;
  3. connections: 5,000 streamed requests opened at once through the router, twice; errors and
     the router's RSS before, during (peak) and after each wave.

With ``--baseline REF`` (a commit), the router as it was at REF runs beside today's (from a git
worktree, its own process) and takes part in phases 1 and 2 as ``router@REF``: a change's cost
is read side by side, in one run, on the same noisy machine. With ``--without-ui``, a router
started with ``--no-ui`` takes part as ``router-no-ui`` (the console's cost is the difference to
``router``). With ``--with-keys``, a second router of today's takes part as ``router+keys``:
named keys from a keys file, a key with minute limits and a daily quota far above what the run
sends (so every request is counted and settled, none refused), and usage records; every path is
sent that key (the others ignore it).

    python benchmarks/router_overhead.py [--baseline REF] [--with-keys] [--without-ui]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, describe, machine_info, save_figure
from _servers import Usage, answers, background, rss_mib, usage

from slurm_llm import _debian
from slurm_llm._api_keys import KeysFile
from slurm_llm.bench import percentile
from slurm_llm.nginx import NginxConfig, NginxServer, ensure_nginx
from slurm_llm.node._ports import lease_port

HERE = Path(__file__).parent
COLUMNS = ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms")
# phase 2, per request: CPU µs and context switches (waits: nothing to do; preempted: the core
# given to another process), and the cores the proxy used
CPU_COLUMNS = ("proxy_us", "mock_us", "wrk_us", "proxy_cores", "proxy_waits", "proxy_preempted",
               "mock_preempted")  # fmt: skip
GOALS = {
    "added_p50_ms": 2.0,
    "added_p99_ms": 15.0,
    "router_vs_nginx": 0.5,  # req/s, one worker each
}
ARRIVALS = ("spread", "together")  # phase 1's two ways (the module's docstring); goals: spread
TWO = "router-x2"
MOCK = "mock"  # the mock upstream's entry among the processes whose CPU time is read
NO_UI = "router-no-ui"
WRK_BODY = {
    "model": "mock",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{json.dumps(WRK_BODY)}'
"""


def raise_open_files(wanted: int = 65536) -> int:
    """Every process started from here inherits it: 5,000 connections need 10,000+ descriptors
    in the router (client side and upstream side). Root may raise the hard limit too, unless a
    container withholds that right; then the hard limit is what there is."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return min(wanted, hard)


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full: a server
    with a short accept backlog makes clients wait for SYN retransmits (1, 3, 7, 15 s...)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def loadgen(mode: str, url: str, limit_s: float, **options: object) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "_loadgen.py"), mode, "--url", url]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def wrk(url: str, script: Path, seconds: int, connections: int) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    text = done.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", text)
    served = re.search(r"(\d+) requests in", text)
    if done.returncode != 0 or not found or not served:
        raise RuntimeError(f"wrk failed:\n{text}\n{done.stderr}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return {"req_s": float(found.group(1)), "requests": int(served.group(1)), "errors": errors}


def ms(values: list[float], q: float) -> float:
    found = percentile(values, q)
    if found is None:
        raise RuntimeError("no request of this phase succeeded: see its errors above")
    return found * 1000


def rotated(paths: list[str], round_no: int) -> list[str]:
    """The paths in this round's order: each path goes first once every len(paths) rounds."""
    turn = round_no % len(paths)
    return paths[turn:] + paths[:turn]


def phase_streams(
    urls: dict[str, str],
    rounds: int,
    duration: float,
    concurrency: int,
    chunks: int,
    console: Console,
    key: str | None = None,
    spread_s: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """TTFT and end-to-end samples per path; the clients' first requests spread evenly over
    ``spread_s`` (0: all at once)."""
    samples: dict[str, dict[str, Any]] = {
        path: {"ttft": [], "e2e": [], "errors": {}} for path in urls
    }
    for round_no in range(rounds):
        for path in rotated(list(urls), round_no):
            result = loadgen(
                "streams",
                urls[path],
                duration + 60,
                concurrency=concurrency,
                duration=duration,
                chunks=chunks,
                spread_s=spread_s,
                **({"api_key": key} if key else {}),
            )
            samples[path]["ttft"] += result["ttft"]
            samples[path]["e2e"] += result["e2e"]
            for kind, count in result["errors"].items():
                samples[path]["errors"][kind] = samples[path]["errors"].get(kind, 0) + count
            console.print(
                f"  streams round {round_no + 1}/{rounds} {path:6}"
                f"{' (together)' if not spread_s else ''}: "
                f"{len(result['ttft'])} requests, "
                f"TTFT p50 {ms(result['ttft'], 50):.2f} ms, p99 {ms(result['ttft'], 99):.2f} ms"
                + (f", errors {result['errors']}" if result["errors"] else "")
            )
    return samples


def phase_throughput(
    urls: dict[str, str],
    pids: dict[str, int],
    rounds: int,
    seconds: int,
    connections: int,
    work: Path,
    console: Console,
    key: str | None = None,
) -> dict[str, list[dict[str, float]]]:
    script = work / "post.lua"
    header = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    script.write_text(WRK_SCRIPT + header)
    runs: dict[str, list[dict[str, float]]] = {path: [] for path in urls}
    for round_no in range(rounds):
        for path in rotated(list(urls), round_no):
            run = wrk_with_cpu(urls[path], pids.get(path), pids[MOCK], script, seconds, connections)
            runs[path].append(run)
            console.print(
                f"  throughput round {round_no + 1}/{rounds} {path:6}: "
                f"{run['req_s']:.0f} req/s, {run['errors']:.0f} errors, proxy "
                f"{run['proxy_us']:.0f} µs and mock {run['mock_us']:.0f} µs of CPU a request"
            )
    return runs


def wrk_with_cpu(
    url: str, proxy: int | None, mock: int, script: Path, seconds: int, connections: int
) -> dict[str, float]:
    """One wrk run, and what each process used per request served: the proxy's CPU time (its
    workers included), the mock's and wrk's, and the proxy's and mock's context switches. CPU
    time, unlike requests per second, shows what a request costs whatever else the machine was
    doing, and so what more cores would give; preemptions show processes crowding the cores."""
    before = {"proxy": usage(proxy) if proxy else Usage(), "mock": usage(mock)}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    run = wrk(url, script, seconds, connections)
    wall = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = {
        "proxy": (usage(proxy) if proxy else Usage()).since(before["proxy"]),
        "mock": usage(mock).since(before["mock"]),
        "wrk": Usage(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime),
    }
    served = max(run["requests"], 1)
    return {
        **run,
        **{f"{name}_us": part.cpu_s / served * 1e6 for name, part in used.items()},
        "proxy_cores": used["proxy"].cpu_s / wall,
        "proxy_waits": used["proxy"].waits / served,
        "proxy_preempted": used["proxy"].preemptions / served,
        "mock_preempted": used["mock"].preemptions / served,
    }


def phase_connections(
    url: str, router_pid: int, waves: int, connections: int, chunks: int, console: Console
) -> dict[str, Any]:
    timeline: list[tuple[float, float]] = []
    start = time.monotonic()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            timeline.append((time.monotonic() - start, rss_mib(router_pid)))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    before = rss_mib(router_pid)
    result: dict[str, Any] = {"rss_before_mib": before, "waves": []}
    try:
        for wave in range(waves):
            began = time.monotonic() - start
            overflows = listen_overflows()
            outcome = loadgen(
                "hold",
                url,
                120,
                concurrency=connections,
                chunks=chunks,
                model="mock-slow",
                timeout=45,
            )
            ended = time.monotonic() - start
            time.sleep(1.5)  # let the router let go of what the wave held
            during = max(rss for at, rss in timeline if began <= at <= ended)
            after = rss_mib(router_pid)
            errors = sum(outcome["errors"].values())
            overflows = listen_overflows() - overflows
            result["waves"].append(
                {
                    "completed": outcome["completed"],
                    "errors": outcome["errors"],
                    "wall_s": outcome["wall_s"],
                    "e2e_p50_s": percentile(outcome["e2e"], 50),
                    "e2e_max_s": max(outcome["e2e"], default=None),
                    "rss_during_peak_mib": during,
                    "rss_after_mib": after,
                    "listen_overflows": overflows,
                }
            )
            console.print(
                f"  connections wave {wave + 1}/{waves}: {outcome['completed']}/{connections} "
                f"streams completed, {errors} errors in {outcome['wall_s']:.1f} s; router RSS "
                f"{before:.0f} -> peak {during:.0f} -> {after:.0f} MiB; "
                f"{overflows} SYNs dropped by full listen queues"
            )
    finally:
        stop.set()
        sampler.join()
    result["timeline"] = timeline
    return result


def summarize(samples: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for path, data in samples.items():
        table[path] = {
            "requests": len(data["e2e"]),
            "errors": sum(data["errors"].values()),
            "error_kinds": data["errors"],
            "ttft_p50_ms": ms(data["ttft"], 50),
            "ttft_p99_ms": ms(data["ttft"], 99),
            "e2e_p50_ms": ms(data["e2e"], 50),
            "e2e_p99_ms": ms(data["e2e"], 99),
        }
    return table


def added_to_direct(streams: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """What each path adds to the mock's own latencies, column by column."""
    return {
        path: {key: streams[path][key] - streams["direct"][key] for key in COLUMNS}
        for path in streams
        if path != "direct"
    }


def streams_table(
    args: argparse.Namespace,
    arrivals: str,
    streams: dict[str, dict[str, Any]],
    added: dict[str, dict[str, float]],
    console: Console,
) -> None:
    title = f"Streams, arrivals {arrivals}: {args.concurrency} concurrent, {args.chunks} chunks"
    table = Table(title=title)
    for column in ("path", "requests", "errors", "TTFT p50", "TTFT p99", "E2E p50", "E2E p99"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for path, row in streams.items():
        table.add_row(
            path,
            f"{row['requests']:.0f}",
            f"{row['errors']:.0f}",
            *(f"{row[k]:.2f} ms" for k in COLUMNS),
        )
    for path, row in added.items():
        table.add_row(f"{path} - direct", "", "", *(f"{row[k]:+.2f} ms" for k in COLUMNS))
    console.print(table)


def verdict(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of phases 1 and 2")
    parser.add_argument("--stream-seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-delay", type=float, default=0.05)
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--baseline", help="a commit whose router runs beside today's")
    parser.add_argument(
        "--replica-limit", type=int, default=0,
        help="slots of the mock replica in every router (default: no limit); with a limit "
        "below the load, the routers queue, and router-x2 splits the slots between its workers",
    )  # fmt: skip
    parser.add_argument("--with-keys", action="store_true",
                        help="also a router with named keys, limits and usage records")  # fmt: skip
    parser.add_argument("--without-ui", action="store_true",
                        help="also a router with --no-ui: what the console costs")  # fmt: skip
    return parser.parse_args()


def main() -> None:
    args = arguments()
    console = Console(width=120)
    began = time.monotonic()
    info = prepared_machine(console)
    router_cli = Path(sys.executable).parent / "slurm-llm"
    router_argv = [str(router_cli)] if router_cli.exists() else [sys.executable, "-m", "slurm_llm"]

    with tempfile.TemporaryDirectory(prefix="router-overhead-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        os.environ["SLURM_LLM_HOME"] = str(work)  # the routers' usage records stay in here
        ports = [stack.enter_context(lease_port("127.0.0.1")).port for _ in range(4)]
        mock_port, slow_port, router_port, nginx_port = ports
        mock = f"http://127.0.0.1:{mock_port}"
        slow = f"http://127.0.0.1:{slow_port}"
        mock_argv = [sys.executable, str(HERE / "_mock_upstream.py")]
        mock_process = stack.enter_context(
            background(
                [
                    *mock_argv,
                    "--port",
                    str(mock_port),
                    "--chunks",
                    str(args.chunks),
                    "--chunk-delay",
                    str(args.chunk_delay),
                ],
                answers(f"{mock}/health"),
                work / "mock.log",
            )
        )
        stack.enter_context(
            background(
                [*mock_argv, "--port", str(slow_port), "--chunks", "4", "--chunk-delay", "1.0"],
                answers(f"{slow}/health"),
                work / "mock-slow.log",
            )
        )
        backends = ["--backend", f"mock={mock}", "--backend", f"mock-slow={slow}"]
        if args.replica_limit:  # the admission queue in the path: what splitting slots costs
            backends += ["--replica-limit", str(args.replica_limit)]
        router = stack.enter_context(
            router_process(router_argv, router_port, backends, work / "router.log")
        )
        bare, bare_pid = bare_proxy(stack, mock, work)
        two_port = stack.enter_context(lease_port("127.0.0.1")).port
        two = stack.enter_context(
            router_process(
                router_argv, two_port, [*backends, "--workers", "2"], work / "router2.log"
            )
        )
        (work / "nginx").mkdir()
        nginx = stack.enter_context(
            NginxServer(
                NginxConfig(
                    {"mock": [mock], "mock-slow": [slow]},
                    work / "nginx",
                    port=nginx_port,
                    worker_processes=1,
                    worker_connections=20000,
                )
            )
        )
        urls = {
            "direct": f"{mock}/v1/chat/completions",
            "router": f"http://127.0.0.1:{router_port}/v1/chat/completions",
            "nginx": f"{nginx.url}/mock/v1/chat/completions",
            TWO: f"http://127.0.0.1:{two_port}/v1/chat/completions",
            "bare": bare,
        }
        pids = {MOCK: mock_process.pid, "router": router.pid, TWO: two.pid, "bare": bare_pid}
        if nginx.pid is not None:
            pids["nginx"] = nginx.pid
        key = optional_paths(args, stack, router_argv, backends, work, urls, pids)
        stream_s = args.chunks * args.chunk_delay
        console.print(
            f"[bold]1. streams[/bold]: {args.concurrency} concurrent, {args.chunks} chunks "
            f"{args.chunk_delay * 1000:.0f} ms apart, "
            f"{args.stream_seconds:.0f} s per path and round; first requests spread over "
            f"{stream_s:.2f} s, then all at once"
        )
        samples = {}
        for arrivals in ARRIVALS:
            spread_s = stream_s if arrivals == "spread" else 0.0
            samples[arrivals] = phase_streams(
                urls, args.rounds, args.stream_seconds, args.concurrency, args.chunks, console,
                key, spread_s,
            )  # fmt: skip
        console.print(
            f"[bold]2. throughput[/bold]: wrk, {args.wrk_connections} connections, non-streamed"
        )
        throughput = phase_throughput(
            urls, pids, args.rounds, args.wrk_seconds, args.wrk_connections, work, console, key
        )
        console.print(
            f"[bold]3. connections[/bold]: {args.connections} streams at once through the router "
            "(4 chunks 1 s apart)"
        )
        connections = phase_connections(
            urls["router"], router.pid, args.waves, args.connections, 4, console
        )
        router_log = (work / "router.log").read_text(errors="replace")[-2000:]

    elapsed = time.monotonic() - began
    info["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report(args, info, samples, throughput, connections, router_log, elapsed, console)


def optional_paths(
    args: argparse.Namespace,
    stack: ExitStack,
    router_argv: list[str],
    backends: list[str],
    work: Path,
    urls: dict[str, str],
    pids: dict[str, int],
) -> str | None:
    """The routers asked for besides today's (added to ``urls`` and their processes to
    ``pids``); the key to send, if any."""
    if args.baseline:
        source = stack.enter_context(worktree(args.baseline, work / "baseline"))
        port = stack.enter_context(lease_port("127.0.0.1")).port
        env = {**os.environ, "PYTHONPATH": str(source)}
        # -P: not the current folder first on sys.path, which would import today's package
        # from this checkout instead of the worktree's.
        argv = [sys.executable, "-P", "-m", "slurm_llm"]
        log = work / "baseline-router.log"
        baseline = stack.enter_context(router_process(argv, port, backends, log, env))
        urls[f"router@{args.baseline}"] = f"http://127.0.0.1:{port}/v1/chat/completions"
        pids[f"router@{args.baseline}"] = baseline.pid
    if args.without_ui:
        port = stack.enter_context(lease_port("127.0.0.1")).port
        log = work / "router-no-ui.log"
        no_ui = stack.enter_context(router_process(router_argv, port, [*backends, "--no-ui"], log))
        urls[NO_UI] = f"http://127.0.0.1:{port}/v1/chat/completions"
        pids[NO_UI] = no_ui.pid
    if not args.with_keys:
        return None
    urls["router+keys"], key, pids["router+keys"] = keyed_router(stack, router_argv, backends, work)
    return key


def prepared_machine(console: Console) -> dict[str, Any]:
    """wrk and nginx installed, open files raised; the machine's description, printed and
    returned."""
    open_files = raise_open_files()
    _debian.ensure_packages(("wrk",), ("wrk",), RuntimeError, "this benchmark")
    nginx = ensure_nginx()
    info = machine_info(("slurm-llm", "aiohttp", "uvloop"))
    nginx_version = subprocess.run(
        [nginx, "-v"], capture_output=True, text=True, check=False
    ).stderr.strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    info["packages"]["nginx"] = nginx_version.removeprefix("nginx version: ")
    info["packages"]["wrk"] = (wrk_version.stdout or wrk_version.stderr).split()[1]
    # Anything else running skews every number here; the load average says whether it did.
    info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    console.print(f"Machine: {describe(info)}; open files {open_files}")
    console.print(f"Load average before starting: {' '.join(info['loadavg_at_start'])}")
    console.print(
        "Load generator, router, nginx and the mock upstream all share this machine's "
        f"{os.cpu_count()} cores."
    )
    return info


def bare_proxy(stack: ExitStack, upstream: str, work: Path) -> tuple[str, int]:
    """``_bare_proxy.py`` in front of ``upstream`` until ``stack`` closes; its chat URL and
    pid."""
    port = stack.enter_context(lease_port("127.0.0.1")).port
    argv = [sys.executable, str(HERE / "_bare_proxy.py"), "--port", str(port),
            "--upstream", upstream]  # fmt: skip
    process = stack.enter_context(
        background(argv, answers(f"http://127.0.0.1:{port}/health"), work / "bare.log")
    )
    return f"http://127.0.0.1:{port}/v1/chat/completions", process.pid


@contextmanager
def router_process(
    argv: list[str], port: int, backends: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    options = [
        "router", "--host", "127.0.0.1", "--port", str(port),
        # Measure the proxy, not the admission queue: no per-replica cap to wait for (unless
        # ``backends`` ends with a --replica-limit of its own: the last one counts).
        "--replica-limit", "100000", "--max-queue", "100000", "--probe-interval", "0", *backends,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/health"
    with background([*argv, *options], answers(url), log, env=env) as process:
        yield process


def keyed_router(
    stack: ExitStack, argv: list[str], backends: list[str], work: Path
) -> tuple[str, str, int]:
    """A router with a keys file, and a key whose limits the run never reaches: every request
    is counted and settled, none refused. Its chat URL, the key and its pid."""
    keys = KeysFile(work / "keys.toml")
    key = keys.add("bench", requests_per_minute=10**9, tokens_per_minute=10**12,
                   tokens_per_day=10**15)  # fmt: skip
    port = stack.enter_context(lease_port("127.0.0.1")).port
    keyed = [*backends, "--api-keys-file", str(keys.path)]
    process = stack.enter_context(router_process(argv, port, keyed, work / "keys-router.log"))
    return f"http://127.0.0.1:{port}/v1/chat/completions", key, process.pid


@contextmanager
def worktree(ref: str, where: Path) -> Iterator[Path]:
    """This repository at ``ref``, checked out beside it for as long as the context lasts."""
    repo = HERE.parent
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "worktree", "add", "--detach", str(where), ref], check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(where)], check=False)


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    samples: dict[str, dict[str, dict[str, Any]]],
    throughput: dict[str, list[dict[str, float]]],
    connections: dict[str, Any],
    router_log: str,
    elapsed: float,
    console: Console,
) -> None:
    summaries = {arrivals: summarize(samples[arrivals]) for arrivals in ARRIVALS}
    added_by = {arrivals: added_to_direct(summaries[arrivals]) for arrivals in ARRIVALS}
    streams, added = summaries["spread"], added_by["spread"]
    req_s = {path: statistics.median(r["req_s"] for r in runs) for path, runs in throughput.items()}
    cpu = {
        path: {name: statistics.median(r[name] for r in runs) for name in CPU_COLUMNS}
        for path, runs in throughput.items()
    }
    paired = {  # what the host's drift between rounds leaves out of a ratio
        pair: [a["req_s"] / b["req_s"] for a, b in zip(*(throughput[p] for p in pair), strict=True)]
        for pair in (("router", "nginx"), (TWO, "router"))
    }
    for arrivals in ARRIVALS:
        streams_table(args, arrivals, summaries[arrivals], added_by[arrivals], console)

    table = Table(title=f"Throughput: wrk, {args.wrk_connections} connections, non-streamed")
    rate_columns = ("req/s (median)", "req/s per round", "errors", "proxy cores",
                    "CPU µs a request: proxy", "mock", "wrk",
                    "switches a request: proxy waited", "preempted", "mock preempted")  # fmt: skip
    for column in ("path", *rate_columns):
        table.add_column(column, justify="left" if column == "path" else "right")
    for path, runs in throughput.items():
        table.add_row(
            path,
            f"{req_s[path]:.0f}",
            ", ".join(f"{r['req_s']:.0f}" for r in runs),
            f"{sum(r['errors'] for r in runs):.0f}",
            f"{cpu[path]['proxy_cores']:.2f}",
            *(f"{cpu[path][name]:.0f}" for name in ("proxy_us", "mock_us", "wrk_us")),
            *(
                f"{cpu[path][name]:.2f}"
                for name in ("proxy_waits", "proxy_preempted", "mock_preempted")
            ),
        )
    console.print(table)
    per_worker = cpu[TWO]["proxy_us"] / cpu["router"]["proxy_us"]
    console.print(
        f"CPU a request (medians of the rounds): router {cpu['router']['proxy_us']:.0f} µs with "
        f"one worker, {cpu[TWO]['proxy_us']:.0f} µs with two ({per_worker:.2f}x); nginx "
        f"{cpu['nginx']['proxy_us']:.0f} µs. One router core serves about "
        f"{1e6 / cpu['router']['proxy_us']:.0f} req/s; with a core for each, N workers about "
        f"N x {1e6 / cpu[TWO]['proxy_us']:.0f}. Preempted per request: "
        f"{cpu['router']['proxy_preempted']:.2f} with one worker, "
        f"{cpu[TWO]['proxy_preempted']:.2f} with two."
    )
    for (faster, slower), ratios in paired.items():
        console.print(
            f"{faster} / {slower}, the rounds' own ratios (each round runs every path back to "
            f"back): {', '.join(f'{r:.2f}' for r in ratios)} "
            f"(median {statistics.median(ratios):.2f})"
        )

    table = Table(title=f"{args.connections} concurrent streams through the router")
    columns = ("wave", "completed", "errors", "wall", "RSS before", "RSS peak", "RSS after")
    for column in (*columns, "SYNs dropped"):
        table.add_column(column, justify="right")
    for number, wave in enumerate(connections["waves"], 1):
        table.add_row(
            str(number),
            str(wave["completed"]),
            str(sum(wave["errors"].values())),
            f"{wave['wall_s']:.1f} s",
            f"{connections['rss_before_mib']:.0f} MiB",
            f"{wave['rss_during_peak_mib']:.0f} MiB",
            f"{wave['rss_after_mib']:.0f} MiB",
            str(wave["listen_overflows"]),
        )
    console.print(table)

    waves = connections["waves"]
    wave_errors = sum(sum(w["errors"].values()) for w in waves)
    # A leak grows with every wave; bounded memory levels off once the allocator's pools have
    # grown to the peak load, so the last wave is compared with the one before it.
    bounded = len(waves) < 2 or waves[-1]["rss_after_mib"] <= waves[-2]["rss_after_mib"] * 1.1
    goals = {
        "router added TTFT p50 <= 2 ms (arrivals spread)": (
            added["router"]["ttft_p50_ms"] <= GOALS["added_p50_ms"]
        ),
        "router added TTFT p99 <= 15 ms (arrivals spread)": (
            added["router"]["ttft_p99_ms"] <= GOALS["added_p99_ms"]
        ),
        # Read from the rounds' own ratios: two paths measured seconds apart, not the medians
        # of runs minutes apart, between which this kind of host may change speed by half.
        "router req/s >= 0.5 x nginx's (median of the rounds' ratios)": (
            statistics.median(paired[("router", "nginx")]) >= GOALS["router_vs_nginx"]
        ),
        f"{TWO} req/s > router's (median of the rounds' ratios)": (
            statistics.median(paired[(TWO, "router")]) > 1.0
        ),
        f"no errors at {args.connections} connections": wave_errors == 0,
        "router RSS bounded (after last wave <= 1.1 x after the one before)": bounded,
    }
    if args.baseline:  # no regression: within the noise of one run (10 %, or 0.5 ms)
        base = f"router@{args.baseline}"
        goals[f"router req/s >= 0.9 x {base}'s"] = req_s["router"] >= 0.9 * req_s[base]
        goals[f"router added TTFT p50 <= {base}'s + 0.5 ms"] = (
            added["router"]["ttft_p50_ms"] <= added[base]["ttft_p50_ms"] + 0.5
        )
    keys_cost: dict[str, float] = {}
    if args.with_keys:  # the router is one process: its time per request is 1 / its req/s
        keys_cost = {
            "us_per_request_non_streamed": (1 / req_s["router+keys"] - 1 / req_s["router"]) * 1e6,
            "cpu_us_per_request_non_streamed": cpu["router+keys"]["proxy_us"]
            - cpu["router"]["proxy_us"],
            "added_ttft_p50_ms": streams["router+keys"]["ttft_p50_ms"]
            - streams["router"]["ttft_p50_ms"],
        }
        console.print(
            "Named keys, limits and their headers cost "
            f"{keys_cost['us_per_request_non_streamed']:.0f} µs per non-streamed request from "
            f"req/s, {keys_cost['cpu_us_per_request_non_streamed']:.0f} µs from CPU time, "
            f"{keys_cost['added_ttft_p50_ms']:+.2f} ms TTFT p50 on streams, against the router "
            "without keys (both record usage)"
        )
    table = Table(title="Goals (2-core machine; load generator, proxies and upstream share it)")
    table.add_column("goal")
    table.add_column("result", justify="right")
    for goal, ok in goals.items():
        table.add_row(goal, verdict(ok))
    console.print(table)
    console.print(f"Whole benchmark: {elapsed:.0f} s")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"router_overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    title = "Router overhead against a mock upstream: direct vs slurm-llm router vs nginx"
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "title": title,
                "note": "load generator, router, nginx and mock upstream share the machine's cores",
                "settings": vars(args),
                "load_generators": {
                    "streams": "aiohttp + uvloop, own process, closed loop",
                    "throughput": "wrk -t1, closed loop",
                    "connections": "aiohttp + uvloop, own process, one connection per stream",
                },
                "streams": streams,
                "added_vs_direct": added,
                "streams_together": summaries["together"],
                "added_vs_direct_together": added_by["together"],
                "throughput_req_s": {"median": req_s, "runs": throughput},
                "cpu_per_request": cpu,
                "round_ratios": {" / ".join(pair): ratios for pair, ratios in paired.items()},
                "connections": {k: v for k, v in connections.items() if k != "timeline"},
                "router_rss_timeline": connections["timeline"],
                "goals": goals,
                "keys_cost": keys_cost,
                "router_log_tail": router_log,
                "elapsed_s": elapsed,
            },
            indent=2,
        )
    )
    plot(out.with_suffix(".png"), title, info, samples["spread"], req_s, connections)
    console.print(f"Saved {out} and {out.with_suffix('.png')}")


def plot(
    path: Path,
    title: str,
    info: dict[str, Any],
    samples: dict[str, dict[str, Any]],
    req_s: dict[str, float],
    connections: dict[str, Any],
) -> None:
    figure, (ttft, rate, memory) = plt.subplots(1, 3, figsize=(13, 4))
    paths = list(samples)
    ttft.boxplot(
        [[t * 1000 for t in samples[p]["ttft"]] for p in paths],
        orientation="horizontal",
        tick_labels=paths,
        showfliers=False,
        whis=(1, 99),
    )
    ttft.set_xlabel("TTFT, ms (whiskers p1-p99)")
    ttft.set_title("100 concurrent streams, arrivals spread")
    colours = ["grey", "tab:blue", "tab:green", "tab:purple", "tab:cyan", "tab:olive"][: len(paths)]
    rate.bar(paths, [req_s[p] for p in paths], color=colours)
    goal = GOALS["router_vs_nginx"] * req_s["nginx"]
    rate.axhline(goal, color="red", linestyle="--", label="goal (router): 0.5 x nginx")
    rate.set_ylabel("requests/s (wrk, non-streamed)")
    rate.tick_params(axis="x", labelrotation=30)
    rate.legend()
    timeline = connections["timeline"]
    memory.plot([t for t, _ in timeline], [r for _, r in timeline])
    memory.set_xlabel("seconds")
    memory.set_ylabel("router RSS, MiB")
    memory.set_title("waves of concurrent streams")
    memory.set_ylim(bottom=0)
    save_figure(figure, path, title, info)


if __name__ == "__main__":
    main()
