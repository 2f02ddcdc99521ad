"""The tribunal's rounds, revisions, concurrency and degradation, with a scripted stand-in for
the models (the real ones are exercised in tests/integration/test_tribunal.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from slurm_llm.tribunal import LawBook, Tribunal, TribunalConfig, TribunalResult, VerdictLog
from slurm_llm.tribunal._tribunal import Messages

BOOK = LawBook.named("academic")


class ScriptedModels:
    """Answers "draft-N"; critics fail a draft until it has been revised ``fail_until`` times."""

    def __init__(self, fail_until: int = 0) -> None:
        self.fail_until = fail_until
        self.revisions = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.calls: list[tuple[str, str]] = []  # (model, role)

    async def __call__(self, model: str, messages: Messages, max_tokens: int) -> str:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        role = "critic" if "reviewer" in system else "reviser" if "Rewrite" in system else "writer"
        self.calls.append((model, role))
        if "reviewer" in system:
            return "FAIL: informal." if self.revisions < self.fail_until else "PASS."
        if "Rewrite" in system:
            self.revisions += 1
        return f"draft-{self.revisions}"


def run(models: ScriptedModels, max_rounds: int = 3) -> TribunalResult:
    tribunal = Tribunal(models, BOOK, TribunalConfig(generator="m", max_rounds=max_rounds))
    return asyncio.run(tribunal.run("Why is the sky blue?"))


def test_an_answer_every_critic_passes_is_accepted_in_one_round() -> None:
    result = run(ScriptedModels())
    assert result.accepted is True and len(result.rounds) == 1


def test_failed_laws_are_revised_until_they_pass() -> None:
    result = run(ScriptedModels(fail_until=2))
    assert result.accepted is True
    assert [r.draft for r in result.rounds] == ["draft-0", "draft-1", "draft-2"]
    assert result.answer == "draft-2"


def test_an_answer_still_failing_after_the_last_round_is_rejected() -> None:
    result = run(ScriptedModels(fail_until=9), max_rounds=2)
    assert result.accepted is False and len(result.rounds) == 2
    assert result.to_dict()["outcome"] == "rejected"


def test_the_critics_of_a_round_run_at_once() -> None:
    models = ScriptedModels()
    run(models)
    assert models.most_in_flight == len(BOOK.laws)


def test_load_reduces_rounds_then_skips_critique(tmp_path: Path) -> None:
    def at(level: float) -> TribunalResult:
        async def utilisation(model: str) -> float:
            return level

        log = VerdictLog(tmp_path / "v.jsonl")
        config = TribunalConfig(generator="m")
        tribunal = Tribunal(ScriptedModels(fail_until=9), BOOK, config, log, utilisation)
        return asyncio.run(tribunal.run("q"))

    calm, busy, swamped = at(0.5), at(1.2), at(3.0)
    assert (calm.mode, len(calm.rounds)) == ("full", 3)
    assert (busy.mode, len(busy.rounds)) == ("reduced", 1)
    assert (swamped.mode, swamped.rounds, swamped.accepted) == ("base-only", [], None)
    assert "utilisation 3.00 >= 2.0" in swamped.reason
    logged = VerdictLog(tmp_path / "v.jsonl").read().runs
    assert [run["mode"] for run in logged] == ["full", "reduced", "base-only"]


def test_a_larger_model_can_judge_and_revise_what_a_small_one_wrote() -> None:
    models = ScriptedModels(fail_until=1)
    config = TribunalConfig(generator="small", critic="large", max_rounds=2)
    asyncio.run(Tribunal(models, BOOK, config).run("q"))
    assert {role: model for model, role in models.calls} == {
        "writer": "small", "critic": "large", "reviser": "large"
    }  # fmt: skip
