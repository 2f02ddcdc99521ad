"""The router's view of the replicas: read from the endpoint registry or given as fixed URLs.

Backends come and go with registry records (re-read twice a second), so a replica is routed to
as soon as its launcher publishes and forgotten as soon as it withdraws or goes stale; what it
was still answering is cut off then, so streams continue elsewhere at once instead of waiting
out a silent engine. Fixed backends (``--backend MODEL=URL``) serve servers started by other
means.

A replica being drained (scaled down: its record carries the controller's drain marker) gets no
new request; those in flight finish, and its controller stops it once no router has any on it.
An elastic deployment at zero replicas has no record at all: its model stays known through the
controller's ``scaling.json`` (``elastic``), so a request for it waits for it to wake.

A replica is routable unless it is ejected. Passive ejection follows a refused connection or a
5xx and lasts a short, growing time, so retries go elsewhere at once; active ejection follows
several failed deep probes in a row and lasts until probes succeed again (see ``_probes``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from slurm_llm._registry import EndpointRecord, Registry
from slurm_llm.control._autoscale import ScalingRecord
from slurm_llm.router._upstream import Answer


def slot_share(slots: int, worker: int, workers: int) -> int:
    """Worker ``worker``'s share of a replica's ``slots``: together the workers have the
    replica's slots, and each has at least one."""
    return max(1, slots // workers + (1 if worker < slots % workers else 0))


log = logging.getLogger("slurm_llm.router")

EJECT_BASE_S = 1.0
EJECT_MAX_S = 30.0
DEFAULT_SLOTS = 8  # a replica whose record does not say how many sequences it batches
GONE_AFTER_S = 600.0  # a model with no replica for this long is no longer served
# A scaling record not rewritten for this long: its controller is gone, and nothing would wake
# the model.
CONTROLLER_SILENT_S = 30.0
HURRIED_WATCH_S = 0.1  # how often the registry is read while a request waits for a first replica


@dataclass
class Backend:
    url: str
    model: str
    engine: str = "vllm"
    limit: int = DEFAULT_SLOTS  # requests sent at once; more wait in the router's queue
    context: int | None = None  # tokens one request may use, when the record says
    deployment: str | None = None  # whose job it is, for usage records (None: a fixed URL)
    job: str | None = None
    request_priority: bool = False  # the engine schedules by each request's ``priority``
    draining: bool = False  # being scaled down: finishes what it has, takes nothing new
    in_flight: int = 0
    batch_in_flight: int = 0  # of in_flight, the batch-class requests
    answered: int = 0  # requests this replica answered, for balancing checks and metrics
    failures: int = 0  # consecutive passive failures
    ejected_until: float = 0.0
    probe_failures: int = 0  # consecutive failed deep probes
    probe_successes: int = 0
    probed_down: bool = False
    last_success: float = 0.0  # monotonic time of its last good answer (probes skip it)
    # Answers being read from it now: cut off when it leaves the pool (below).
    upstreams: set[Answer] = field(default_factory=set, repr=False)

    def routable(self, now: float) -> bool:
        return not self.probed_down and now >= self.ejected_until

    def free(self) -> bool:
        return self.in_flight < self.limit

    def failed(self, why: str) -> None:
        """Passive ejection with exponential back-off: 1 s, 2 s, 4 s, ... up to 30 s."""
        self.failures += 1
        backoff = min(EJECT_BASE_S * 2 ** (self.failures - 1), EJECT_MAX_S)
        self.ejected_until = time.monotonic() + backoff
        log.warning("%s (%s) ejected for %g s: %s", self.url, self.model, backoff, why)

    def cut_off(self) -> int:
        """Closes the answers being read from it, so their readers see a broken stream at once
        (and continue it elsewhere) rather than a silence as long as the idle timeout; how many
        there were."""
        cut = list(self.upstreams)
        for upstream in cut:
            upstream.close()
        return len(cut)

    def succeeded(self) -> None:
        self.answered += 1
        self.failures = 0
        self.ejected_until = 0.0
        self.last_success = time.monotonic()


class BackendPool:
    """Backends per model, kept in step with the registry (and any fixed URLs)."""

    def __init__(
        self,
        registry: Registry | None,
        deployment: str | None = None,
        static: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        replica_limit: int | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        """``static`` holds (model, url) pairs; ``replica_limit`` overrides every replica's own
        slot count. ``share`` is (worker, workers): this router process takes its share of
        each replica's slots (``slot_share``)."""
        self.registry = registry
        self.deployment = deployment
        self.replica_limit = replica_limit
        self.share = share
        self.backends: dict[str, Backend] = {}  # by url
        self.on_change: Callable[[], None] = lambda: None
        self.hurry: Callable[[], bool] = lambda: False  # a request waits for a replica to come
        pairs = static.items() if isinstance(static, Mapping) else static
        self._static = {url: model for model, url in pairs}
        for url, model in self._static.items():
            self.backends[url] = Backend(url, model, limit=self.slots(replica_limit))
        self._by_model: dict[str, list[Backend]] = {}
        self._last_served: dict[str, float] = {}  # model -> monotonic time it last had a replica
        # Elastic deployments' records by model, replaced whole by ``_elastic`` (one owner).
        self.elastic: dict[str, ScalingRecord] = {}
        self._index()

    def slots(self, slots: int | None) -> int:
        """This process's share of a replica's ``slots`` (None: ``DEFAULT_SLOTS``)."""
        return slot_share(slots or DEFAULT_SLOTS, *self.share)

    def refresh(self) -> None:
        self._apply(self._read())

    async def watch(self, interval: float = 0.5) -> None:
        """Re-reads the registry off the event loop; applies the changes on it, where the
        admission queue reads the backends. Faster while a request waits for a model to wake:
        its first replica is then taken the moment it publishes."""
        while True:
            self._apply(await asyncio.to_thread(self._read))
            await asyncio.sleep(HURRIED_WATCH_S if self.hurry() else interval)

    def _read(self) -> dict[str, EndpointRecord] | None:
        if self.registry is None:
            return None
        return {r.url: r for r in self.registry.records(self.deployment)}

    def _apply(self, records: dict[str, EndpointRecord] | None) -> None:
        if records is None:
            return
        changed = False
        for url in list(self.backends):
            if url not in records and url not in self._static:
                if cut := self.backends.pop(url).cut_off():
                    log.warning("%s left the registry: %d answer(s) in flight cut off", url, cut)
                changed = True
        for url, record in records.items():
            known = self.backends.get(url)
            # A new job may come up at an old job's address: it is a new backend.
            if known is None or (known.model, known.job) != (record.model, record.job_id):
                limit = self.slots(self.replica_limit or record.slots)
                self.backends[url] = Backend(
                    url, record.model, record.engine, limit, record.context,
                    deployment=record.deployment, job=record.job_id,
                    request_priority=record.request_priority, draining=record.draining,
                )  # fmt: skip
                changed = True
            elif known.draining != record.draining:
                known.draining = record.draining
                changed = True
        if changed:
            self._index()
            self.on_change()

    def _index(self) -> None:
        """Backends by model, rebuilt when they change rather than on every request."""
        by_model: dict[str, list[Backend]] = {}
        for backend in self.backends.values():
            if not backend.draining:
                by_model.setdefault(backend.model, []).append(backend)
        now = time.monotonic()  # each model that had a replica until now, or has one
        self._last_served.update(dict.fromkeys({*self._by_model, *by_model}, now))
        self._by_model = dict(sorted(by_model.items()))

    def models(self) -> list[str]:
        return list(self._by_model)

    def serves(self, model: str) -> bool:
        """Whether a replica a new request may go to serves ``model``."""
        return model in self._by_model

    def served_lately(self, model: str, within_s: float = GONE_AFTER_S) -> bool:
        """Whether ``model`` had a replica within the last ``within_s`` seconds: a model whose
        replicas are all being replaced is missing, not unknown."""
        last = self._last_served.get(model)
        return last is not None and time.monotonic() - last < within_s

    def known_models(self) -> frozenset[str]:
        """The models served now or lately (their replicas may be being replaced), and those
        of elastic deployments that can be woken."""
        lately = {m for m in self._last_served if self.served_lately(m)}
        return frozenset(self._by_model) | lately | set(self.wakeable_models())

    def wake_problem(self, model: str) -> str:
        """Why nothing would wake ``model``, or "" while its elastic deployment's controller
        runs: no controller writes its record (it is not elastic, its deployment stopped, or
        its controller died), or its replica failed to start."""
        record = self.elastic.get(model)
        if record is None:
            return "its deployment is no longer running"
        if record.failed:
            return f"its replica could not start: {record.failed}"
        if time.time() - record.written >= CONTROLLER_SILENT_S:
            return "its controller has stopped"
        return ""

    def wakeable(self, model: str) -> bool:
        """Whether ``model`` belongs to an elastic deployment whose controller is running, so
        a request for it may wait for a replica to start."""
        return not self.wake_problem(model)

    def wakeable_models(self) -> list[str]:
        return [model for model in self.elastic if self.wakeable(model)]

    def waking(self, model: str) -> bool:
        """Whether a request for ``model`` would wait for an elastic deployment to wake (it
        has no replica a request may go to, and can be woken)."""
        return not self.of(model) and self.wakeable(model)

    def of(self, model: str) -> list[Backend]:
        """The replicas a new request for ``model`` may go to (none that is draining)."""
        return self._by_model.get(model, [])
