"""The tribunal: generate an answer, have one critic per law judge it (concurrently, so a round
costs about one critic's time, not one per law), revise it against the laws it broke, repeat.

It runs wherever chat completions can be had: inside the router, on its own dispatcher
(``/v1/tribunal``), or from Python against any router URL (``Tribunal.over_http``). Under load
it does less rather than queue behind itself: past ``reduce_at`` utilisation of the critic's
model it runs one round only, past ``base_only_at`` it returns the generator's answer alone, and
the result says which and why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from slurm_llm.tribunal._laws import Law, LawBook
from slurm_llm.tribunal._log import VerdictLog
from slurm_llm.tribunal._verdicts import Verdict, read_verdict

Messages = list[dict[str, str]]
Mode = Literal["full", "reduced", "base-only"]

CRITIC_SYSTEM = (
    "You are a strict reviewer. Judge whether the ANSWER obeys the LAW. Start your reply with "
    "the word PASS or the word FAIL, then give your reasons in one sentence."
)
REVISER_SYSTEM = (
    "Rewrite the ANSWER to the QUESTION so that it obeys every law listed, keeping what is "
    "correct. Reply with the new answer only."
)


class Complete(Protocol):
    """One chat completion: the model's reply text."""

    def __call__(self, model: str, messages: Messages, max_tokens: int) -> Awaitable[str]: ...


Utilisation = Callable[[str], Awaitable[float]]


@dataclass(frozen=True)
class TribunalConfig:
    generator: str
    critic: str | None = None  # None: the generator judges itself
    reviser: str | None = None  # None: the critic's model revises
    max_rounds: int = 3
    answer_tokens: int = 256
    critic_tokens: int = 96
    reduce_at: float = 1.0  # critic-model utilisation (demand / capacity) for one round only
    base_only_at: float = 2.0  # ... for no critique at all

    @property
    def critic_model(self) -> str:
        return self.critic or self.generator

    @property
    def reviser_model(self) -> str:
        return self.reviser or self.critic_model


@dataclass
class Round:
    draft: str
    verdicts: list[Verdict]

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.passed is False]


@dataclass
class TribunalResult:
    prompt: str
    answer: str
    accepted: bool | None  # None: not judged (base-only under load, or every critic abstained)
    rounds: list[Round]
    mode: Mode
    reason: str  # why this mode
    laws: str  # book name@version
    models: dict[str, str]
    seconds: float
    started: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for index, round_ in enumerate(self.rounds):
            data["rounds"][index]["verdicts"] = [
                {"law": v.law, "outcome": v.outcome, "reasons": v.reasons} for v in round_.verdicts
            ]
        data["outcome"] = {True: "accepted", False: "rejected", None: "not judged"}[self.accepted]
        return data


class Tribunal:
    def __init__(
        self,
        complete: Complete,
        book: LawBook,
        config: TribunalConfig,
        log: VerdictLog | None = None,
        utilisation: Utilisation | None = None,
    ) -> None:
        self.complete = complete
        self.book = book
        self.config = config
        self.log = log
        self.utilisation = utilisation

    async def plan(self) -> tuple[Mode, int, str]:
        """How much to do now: mode, rounds, and why."""
        rounds = self.config.max_rounds
        if self.utilisation is None:
            return "full", rounds, "no load information"
        model = self.config.critic_model
        load = await self.utilisation(model)
        if load >= self.config.base_only_at:
            return "base-only", 0, f"{model} utilisation {load:.2f} >= {self.config.base_only_at}"
        if load >= self.config.reduce_at:
            return "reduced", 1, f"{model} utilisation {load:.2f} >= {self.config.reduce_at}"
        return "full", rounds, f"{model} utilisation {load:.2f}"

    async def run(self, prompt: str, draft: str | None = None) -> TribunalResult:
        """Judges and revises ``draft``, or the generator's answer to ``prompt`` when None."""
        started = time.monotonic()
        mode, max_rounds, reason = await self.plan()
        if draft is None:
            question = [{"role": "user", "content": prompt}]
            draft = await self.complete(self.config.generator, question, self.config.answer_tokens)
        rounds: list[Round] = []
        accepted: bool | None = None
        for index in range(max_rounds):
            verdicts = await asyncio.gather(
                *(self.judge(law, prompt, draft) for law in self.book.laws)
            )
            rounds.append(Round(draft, list(verdicts)))
            if not rounds[-1].failed:
                # Accepted when a law passed and none failed; critics that all abstained
                # judged nothing, and revising would not make them judge.
                accepted = True if any(v.passed for v in verdicts) else None
                break
            accepted = False
            if index == max_rounds - 1:
                break
            draft = await self.revise(prompt, draft, rounds[-1].failed)
        result = TribunalResult(
            prompt=prompt,
            answer=draft,
            accepted=accepted,
            rounds=rounds,
            mode=mode,
            reason=reason,
            laws=f"{self.book.name}@{self.book.version}",
            models={
                "generator": self.config.generator,
                "critic": self.config.critic_model,
                "reviser": self.config.reviser_model,
            },
            seconds=time.monotonic() - started,
        )
        if self.log is not None:
            await asyncio.to_thread(self.log.append, result.to_dict())
        return result

    async def judge(self, law: Law, prompt: str, draft: str) -> Verdict:
        check = f"\nCHECK: {law.check}" if law.check else ""
        messages = [
            {"role": "system", "content": CRITIC_SYSTEM},
            {
                "role": "user",
                "content": f"LAW: {law.text}{check}\nQUESTION: {prompt}\nANSWER: {draft}",
            },
        ]
        text = await self.complete(self.config.critic_model, messages, self.config.critic_tokens)
        return read_verdict(law.id, text)

    async def revise(self, prompt: str, draft: str, failed: list[Verdict]) -> str:
        texts = {law.id: law.text for law in self.book.laws}
        broken = "\n".join(
            f"- {texts[v.law]} (critic: {v.reasons or 'no reason given'})" for v in failed
        )
        messages = [
            {"role": "system", "content": REVISER_SYSTEM},
            {"role": "user", "content": f"LAWS:\n{broken}\nQUESTION: {prompt}\nANSWER: {draft}"},
        ]
        revised = await self.complete(
            self.config.reviser_model, messages, self.config.answer_tokens
        )
        return revised.strip() or draft  # an empty revision keeps the draft
