"""A deployment's events: what its controller did and why, numbered, on the shared filesystem.

Every process that acts on a deployment appends here (while holding the deployment's lock), and
any process can read or follow it: ``slurm-llm status`` shows the last few, ``up --foreground``
and ``keep-alive`` follow them by sequence number, which keeps its meaning when old events are
trimmed (a list index would not).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from slurm_llm._files import write_atomic

KEEP_EVENTS = 500  # trimmed to this many once twice as many have piled up


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    text: str

    def __str__(self) -> str:
        return f"{time.strftime('%H:%M:%S', time.localtime(self.time))} {self.text}"


class EventLog:
    """``events.jsonl``: one JSON object per line; appends must hold the deployment's lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, texts: Iterable[str]) -> list[Event]:
        texts = list(texts)
        if not texts:
            return []
        raw = self._raw()
        events = _parse(raw)
        seq = events[-1].seq if events else 0
        now = time.time()
        new = [Event(seq + n, now, text) for n, text in enumerate(texts, start=1)]
        lines = [json.dumps(asdict(event)) + "\n" for event in new]
        if len(events) + len(new) > 2 * KEEP_EVENTS:
            kept = [json.dumps(asdict(e)) + "\n" for e in events[-KEEP_EVENTS:]]
            write_atomic(self.path, "".join(kept + lines))
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as out:
                # A line cut by a crash mid-write must not swallow the next one.
                cut = bool(raw) and not raw.endswith("\n")
                out.write(("\n" if cut else "") + "".join(lines))
        return new

    def read(self, after: int = 0) -> list[Event]:
        """Events with a sequence number above ``after``, oldest first."""
        return [event for event in _parse(self._raw()) if event.seq > after]

    def _raw(self) -> str:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return ""

    def last(self, count: int) -> list[Event]:
        return self.read()[-count:] if count > 0 else []


def _parse(raw: str) -> list[Event]:
    events = []
    for line in raw.splitlines():
        try:
            events.append(Event(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line cut by a crash mid-write
    return events
