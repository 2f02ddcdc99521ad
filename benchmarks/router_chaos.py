"""Chaos under load: requests through the router while replicas die in every way a cluster
kills them, and what each fault cost the clients.

Two replicas of SmolLM2 (llama.cpp, or vLLM's CPU build) on the local executor or a SLURM
cluster, kept whole by a controller thread of this process; ``slurm-llm router`` in its own
process in front of them. A seeded mix of streamed and plain chat and text completions runs
throughout (``--streamed 1.0``: every request streamed), from closed-loop clients that use the
official ``openai`` client with its default retries, as users would. Greedy decoding, so every
answer can be checked against the same request's answer before any fault.

Faults, one at a time, each after a few quiet seconds and followed by the recovery (both
replicas routable again) and a few seconds more:
  kill-engine     SIGKILL to one replica's engine (its launcher restarts it)
  kill-launcher   SIGKILL to one replica's launcher (the job ends; the controller replaces it)
  scancel         scancel of one replica's job                               (SLURM only)
  requeue         scontrol requeue of one replica's job                      (SLURM only)
  node-down       scontrol update State=DOWN of one replica's node, resumed after recovery
                                                                             (SLURM only)
  restart-router  SIGTERM to the router (it finishes what it has), a new one on the same port

Per fault: requests, failed requests (an exception before any text), streams ended with an
error, streams the router continued on another replica, answers that differ from the
fault-free one (duplicated: longer, or restarted from the beginning; diverged: otherwise),
seconds with no routable replica, and seconds to recover.

    python benchmarks/router_chaos.py --engine llamacpp --executor local
    python benchmarks/router_chaos.py --engine llamacpp --executor slurm   # SLURM_CONF exported
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import openai
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, describe, machine_info, save_figure
from _servers import background
from _specs import vllm_cpu

from slurm_llm import Deployment, EndpointRecord, ModelSpec, deploy
from slurm_llm.node._ports import lease_port

MODEL = "smollm2"
LOCAL_FAULTS = ("kill-engine", "kill-launcher", "restart-router")
SLURM_FAULTS = ("kill-engine", "kill-launcher", "scancel", "requeue", "node-down", "restart-router")
PROMPTS = [f"Count from {n} to {n + 30}, separated by commas:" for n in range(1, 60, 7)]
CONTINUED = re.compile(
    r'^slurm_llm_router_stream_continuations_total\{[^}]*outcome="continued"'
    r"[^}]*\} ([0-9.e+]+)$",
    re.M,
)


@dataclass
class Outcome:
    """One request as its client saw it."""

    started: float
    ended: float
    streamed: bool
    endpoint: str
    prompt: int
    text: str = ""
    failed: str | None = None  # an exception before any text
    stream_error: str | None = None  # an exception after some text


@dataclass
class Window:
    """One fault: when it struck, when both replicas were routable again, when it ended."""

    fault: str
    began: float
    struck: float = 0.0
    recovered: float | None = None
    ended: float = 0.0
    continued: float = 0.0
    unroutable_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def spec_for(engine: str) -> ModelSpec:
    if engine == "llamacpp":
        return ModelSpec.preset("smollm2-135m", max_restarts=20)
    # A core of its own per replica: sharing every core, vLLM's own thread binding put both
    # replicas' threads on the same core, and a restarted engine then stalled before serving.
    return vllm_cpu(max_restarts=20, cpus_per_replica=1)


class Load:
    """Closed-loop clients on an event loop of their own thread, until stopped."""

    def __init__(self, url: str, clients: int, streamed: float, seed: int, tokens: int) -> None:
        self.url = url
        self.clients = clients
        self.streamed = streamed
        self.rng = random.Random(seed)
        self.tokens = tokens
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(300)

    async def _run(self) -> None:
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="-", timeout=120)
        await asyncio.gather(*(self._client(client) for _ in range(self.clients)))
        await client.close()

    async def _client(self, client: openai.AsyncOpenAI) -> None:
        while not self.stop.is_set():
            streamed = self.rng.random() < self.streamed
            endpoint = self.rng.choice(["chat", "text"])
            prompt = self.rng.randrange(len(PROMPTS))
            outcome = await ask(client, streamed, endpoint, prompt, self.tokens)
            self.outcomes.append(outcome)
            if outcome.failed or outcome.stream_error:
                await asyncio.sleep(1.0)  # as a user would, after the client's own retries


async def ask(
    client: openai.AsyncOpenAI, streamed: bool, endpoint: str, prompt: int, tokens: int
) -> Outcome:
    outcome = Outcome(time.time(), 0.0, streamed, endpoint, prompt)
    pieces: list[str] = []
    try:
        if endpoint == "chat":
            messages: Any = [{"role": "user", "content": PROMPTS[prompt]}]
            if streamed:
                async for chunk in await client.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=tokens, temperature=0, stream=True
                ):
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
            else:
                reply = await client.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=tokens, temperature=0
                )
                pieces.append(reply.choices[0].message.content or "")
        elif streamed:
            async for part in await client.completions.create(
                model=MODEL, prompt=PROMPTS[prompt], max_tokens=tokens, temperature=0, stream=True
            ):
                if part.choices and part.choices[0].text:
                    pieces.append(part.choices[0].text)
        else:
            done = await client.completions.create(
                model=MODEL, prompt=PROMPTS[prompt], max_tokens=tokens, temperature=0
            )
            pieces.append(done.choices[0].text)
    except Exception as exc:  # every failure is what this benchmark counts
        reason = f"{type(exc).__name__}: {str(exc)[:160]}"
        if pieces:
            outcome.stream_error = reason
        else:
            outcome.failed = reason
    outcome.text = "".join(pieces)
    outcome.ended = time.time()
    return outcome


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def routable(router: str, seen: list[Any] | None = None) -> int:
    """Replicas the router can route to now (0 while the router itself is down); what it said
    goes to ``seen`` when there are none, for a look."""
    try:
        loads = json.loads(http_text(f"{router}/v1/load"))["models"]
    except OSError as exc:
        loads = [{"model": MODEL, "routable": 0, "router": f"{type(exc).__name__}: {exc}"}]
    found = sum(m["routable"] for m in loads if m["model"] == MODEL)
    if not found and seen is not None:
        seen.append({"at": time.time(), "load": loads})
    return int(found)


def continued(router: str) -> float:
    try:
        return sum(float(v) for v in CONTINUED.findall(http_text(f"{router}/metrics")))
    except OSError:
        return 0.0


class Watch:
    """Samples how many replicas the router can route to, ten times a second."""

    def __init__(self, router: str) -> None:
        self.router = router
        self.samples: list[tuple[float, int]] = []
        self.unroutable: list[Any] = []  # what /v1/load said when nothing was routable
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.samples.append((time.time(), routable(self.router, self.unroutable)))

    def unroutable_s(self, begin: float, end: float) -> float:
        inside = [(t, n) for t, n in self.samples if begin <= t <= end]
        return sum(0.1 for _, n in inside if n == 0)


class RouterProcess:
    """``slurm-llm router`` in its own process on a fixed port; restarted as a site would, with
    no connection refused: a new router on the same port (``--reuse-port``), then SIGTERM to the
    old one, which stops listening and finishes what it has."""

    def __init__(self, deployment: str, port: int, logs: Path, stack: ExitStack) -> None:
        cli = Path(sys.executable).parent / "slurm-llm"
        base = [str(cli)] if cli.exists() else [sys.executable, "-m", "slurm_llm"]
        self.argv = [
            *base,
            "router",
            "--port",
            str(port),
            "--deployment",
            deployment,
            "--probe-interval",
            "2",
            "--reuse-port",
        ]
        self.url = f"http://127.0.0.1:{port}"
        self.logs = logs
        self.started = 0
        self.stack = stack
        self.current = self.start()

    def start(self) -> ExitStack:
        self.started += 1
        log = self.logs / f"router-{self.started}.log"
        log.touch()
        running = ExitStack()
        # Listening once it says so: the old router on the same port answers /health as well.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        ready = lambda: "Routing" in log.read_text()  # noqa: E731
        running.enter_context(background(self.argv, ready, log, env=env))
        self.stack.callback(running.close)
        return running

    def restart(self) -> None:
        began = time.monotonic()
        old, self.current = self.current, self.start()
        listening = time.monotonic() - began
        old.close()
        print(
            f"    new router listening after {listening:.1f} s, "
            f"the old one gone after {time.monotonic() - began:.1f} s"
        )


def strike(
    fault: str, deployment: Deployment, router: RouterProcess, rng: random.Random, window: Window
) -> Callable[[], None]:
    """Strikes ``fault``; returns what undoes it once both replicas serve again."""
    records = sorted(deployment.records(), key=lambda r: r.replica)
    victim: EndpointRecord = rng.choice(records)
    window.notes.append(f"replica {victim.replica} ({victim.job_id} on {victim.node})")
    if fault == "kill-engine":
        os.kill(victim.engine_pid, signal.SIGKILL)
    elif fault == "kill-launcher":
        os.kill(victim.launcher_pid, signal.SIGKILL)
    elif fault == "scancel":
        subprocess.run(["scancel", victim.job_id], check=True)
    elif fault == "requeue":
        subprocess.run(["scontrol", "requeue", victim.job_id], check=True)
    elif fault == "node-down":
        node = f"NodeName={victim.node}"
        subprocess.run(["scontrol", "update", node, "State=DOWN", "Reason=chaos"], check=True)

        def resume() -> None:
            # A node whose slurmd still answers may be back by itself (ReturnToService).
            resume_node = ["scontrol", "update", node, "State=RESUME"]
            subprocess.run(resume_node, check=False, capture_output=True)

        return resume
    elif fault == "restart-router":
        router.restart()
    return lambda: None


def recovered(deployment: Deployment, router: RouterProcess) -> bool:
    """Two replicas the router routes to, each of which answers: a killed engine's record
    stays while its launcher restarts it, so the router's count alone would say too soon."""
    if routable(router.url) < 2:
        return False
    records = deployment.records()
    try:
        return len(records) >= 2 and all(http_text(f"{r.url}/health") is not None for r in records)
    except OSError:
        return False


def run_fault(
    fault: str,
    deployment: Deployment,
    router: RouterProcess,
    watch: Watch,
    rng: random.Random,
    args: argparse.Namespace,
    console: Console,
) -> Window:
    window = Window(fault, time.time())
    before = continued(router.url)
    time.sleep(args.quiet_s)
    window.struck = time.time()
    undo = strike(fault, deployment, router, rng, window)
    deadline = time.time() + args.recover_s
    time.sleep(1.0)  # let the fault be seen before waiting for the recovery
    while time.time() < deadline and not recovered(deployment, router):
        time.sleep(0.2)
    if recovered(deployment, router):
        window.recovered = time.time()
    undo()
    time.sleep(args.quiet_s)
    window.ended = time.time()
    window.continued = continued(router.url) - (0.0 if fault == "restart-router" else before)
    window.unroutable_s = watch.unroutable_s(window.struck, window.ended)
    recovery = f"{window.recovered - window.struck:.1f} s" if window.recovered else "not within"
    console.print(f"  {fault}: {', '.join(window.notes)}; recovered in {recovery}")
    return window


def mismatches(outcomes: list[Outcome], references: dict[tuple[str, int], str]) -> list[Any]:
    """The answers that differ from the fault-free ones, with both texts, for a look."""
    return [
        {**asdict(o), "reference": references[(o.endpoint, o.prompt)]}
        for o in outcomes
        if not (o.failed or o.stream_error) and o.text != references[(o.endpoint, o.prompt)]
    ]


def judge(outcomes: list[Outcome], references: dict[tuple[str, int], str]) -> dict[str, int]:
    counts = {
        "requests": len(outcomes),
        "failed": 0,
        "stream_errors": 0,
        "duplicated": 0,
        "diverged": 0,
    }
    for o in outcomes:
        if o.failed:
            counts["failed"] += 1
            continue
        if o.stream_error:
            counts["stream_errors"] += 1
            continue
        reference = references.get((o.endpoint, o.prompt))
        if reference is None or o.text == reference:
            continue
        # Duplicated: some text twice (the answer restarted, or overlapping where it went on);
        # diverged: anything else, such as a few tokens more or a different word.
        restarted = len(reference) > 8 and o.text.count(reference[:12]) > 1
        overlapped = len(o.text) > len(reference) and not o.text.startswith(reference)
        counts["duplicated" if restarted or overlapped else "diverged"] += 1
    return counts


def fault_free(url: str, tokens: int) -> dict[tuple[str, int], str]:
    """Each request's answer before any fault (greedy: the same every time)."""

    async def collect() -> dict[tuple[str, int], str]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-", timeout=120)
        found = {}
        for endpoint in ("chat", "text"):
            for prompt in range(len(PROMPTS)):
                outcome = await ask(client, False, endpoint, prompt, tokens)
                if outcome.failed:
                    raise RuntimeError(f"the fault-free pass failed: {outcome.failed}")
                found[(endpoint, prompt)] = outcome.text
        await client.close()
        return found

    return asyncio.run(collect())


@contextmanager
def chaos_setup(
    args: argparse.Namespace, home: Path, console: Console
) -> Iterator[tuple[Deployment, RouterProcess]]:
    os.environ["SLURM_LLM_HOME"] = str(home)
    with ExitStack() as stack:
        console.print(f"deploying 2 replicas ({args.engine}, {args.executor}) ...")
        deployment = stack.enter_context(
            deploy(
                spec_for(args.engine),
                replicas=2,
                executor=args.executor,
                name=f"chaos-{args.engine}",
                progress=False,
                timeout=900,
            )
        )
        port = stack.enter_context(lease_port("127.0.0.1")).port
        router = RouterProcess(deployment.name, port, home, stack)
        while routable(router.url) < 2:
            time.sleep(0.2)
        yield deployment, router


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--engine", choices=("llamacpp", "vllm"), default="llamacpp")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--faults", help="comma-separated; default: all the executor allows")
    parser.add_argument("--streamed", type=float, default=1.0, help="share of streamed requests")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens of each request")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quiet-s", type=float, default=4.0)
    parser.add_argument("--recover-s", type=float, default=300.0)
    args = parser.parse_args()
    faults = (
        args.faults.split(",")
        if args.faults
        else list(SLURM_FAULTS if args.executor == "slurm" else LOCAL_FAULTS)
    )
    console = Console(width=130)
    info = machine_info(("slurm-llm", "xllamacpp", "openai", "aiohttp"))
    console.print(f"Machine: {describe(info)}")
    rng = random.Random(args.seed)
    windows: list[Window] = []
    began = time.time()
    with (
        tempfile.TemporaryDirectory(dir=Path.home(), prefix="chaos-") as tmp,
        chaos_setup(args, Path(tmp), console) as (deployment, router),
    ):
        references = fault_free(router.url, args.tokens)
        console.print(
            f"fault-free answers: {len(references)}; load: {args.clients} clients, "
            f"{args.streamed:.0%} streamed, {args.tokens} tokens each"
        )
        watch = Watch(router.url)
        watch.thread.start()
        with Load(router.url, args.clients, args.streamed, args.seed, args.tokens) as load:
            for fault in faults:
                windows.append(run_fault(fault, deployment, router, watch, rng, args, console))
        watch.stop.set()
        outcomes = load.outcomes
        logs = {
            log.name: log.read_text(errors="replace")[-3000:]
            for log in sorted(Path(tmp).glob("router-*.log"))
        }
    report(args, info, windows, outcomes, references, watch, began, logs, console)


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    windows: list[Window],
    outcomes: list[Outcome],
    references: dict[tuple[str, int], str],
    watch: Watch,
    began: float,
    logs: dict[str, str],
    console: Console,
) -> None:
    rows = []
    table = Table(
        title=f"Chaos: {args.engine} on {args.executor}, {args.streamed:.0%} streamed, "
        f"{args.clients} clients"
    )
    columns = (
        "fault",
        "requests",
        "failed",
        "streams errored",
        "streams continued",
        "duplicated",
        "diverged",
        "s unroutable",
        "s to recover",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "fault" else "right")
    for w in windows:
        inside = [o for o in outcomes if w.began <= o.started < w.ended]
        counts = judge(inside, references)
        recovery = w.recovered - w.struck if w.recovered else None
        rows.append(
            {
                "fault": w.fault,
                **counts,
                "continued": w.continued,
                "unroutable_s": w.unroutable_s,
                "recovery_s": recovery,
                "notes": w.notes,
            }
        )
        table.add_row(
            w.fault,
            str(counts["requests"]),
            str(counts["failed"]),
            str(counts["stream_errors"]),
            f"{w.continued:.0f}",
            str(counts["duplicated"]),
            str(counts["diverged"]),
            f"{w.unroutable_s:.1f}",
            f"{recovery:.1f}" if recovery is not None else "-",
        )
    console.print(table)
    failures = [asdict(o) for o in outcomes if o.failed or o.stream_error][:50]
    for failure in failures[:10]:
        console.print(f"  {failure['failed'] or failure['stream_error']}")
    RESULTS.mkdir(exist_ok=True)
    stem = f"router_chaos-{args.engine}-{args.executor}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = RESULTS / f"{stem}.json"
    title = f"Router chaos: {args.engine} replicas on {args.executor}, faults under load"
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "title": title,
                "settings": vars(args),
                "faults": rows,
                "requests_total": len(outcomes),
                "mismatches": mismatches(outcomes, references)[:50],
                "router_log_tails": logs,
                "unroutable_samples": watch.unroutable[:20],
                "failures_sample": failures,
                "elapsed_s": time.time() - began,
            },
            indent=2,
        )
    )
    plot(out.with_suffix(".png"), title, info, windows, outcomes, watch.samples, began)
    console.print(f"Saved {out} and {out.with_suffix('.png')}")


def plot(
    path: Path,
    title: str,
    info: dict[str, Any],
    windows: list[Window],
    outcomes: list[Outcome],
    samples: list[tuple[float, int]],
    began: float,
) -> None:
    figure, (load_axis, replicas_axis) = plt.subplots(2, 1, figsize=(11, 5), sharex=True)
    done = sorted(o.ended - began for o in outcomes if not (o.failed or o.stream_error))
    bad = sorted(o.ended - began for o in outcomes if o.failed or o.stream_error)
    width = 2.0
    end = max([*done, *bad, 1.0])
    bins = [i * width for i in range(int(end / width) + 2)]
    load_axis.hist(
        [done, bad],
        bins=bins,
        stacked=True,
        color=["tab:blue", "tab:red"],
        label=["answered", "failed or errored"],
    )
    load_axis.set_ylabel(f"requests per {width:.0f} s")
    load_axis.legend(loc="upper right")
    replicas_axis.step([t - began for t, _ in samples], [n for _, n in samples], where="post")
    replicas_axis.set_ylabel("routable replicas")
    replicas_axis.set_xlabel("seconds")
    replicas_axis.set_ylim(-0.2, 2.5)
    for w in windows:
        for axis in (load_axis, replicas_axis):
            axis.axvline(w.struck - began, color="grey", linestyle="--", linewidth=0.8)
        load_axis.annotate(
            w.fault,
            (w.struck - began, load_axis.get_ylim()[1] * 0.9),
            rotation=90,
            fontsize=7,
            va="top",
        )
    save_figure(figure, path, title, info)


if __name__ == "__main__":
    main()
