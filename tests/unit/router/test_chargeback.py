"""Sharing each deployment's hours out by token share, against figures worked out by hand.

The same report over a real run (the local SLURM cluster's ``sacct``, a real llama.cpp replica)
is checked in ``tests/integration/test_chargeback.py``.
"""

from __future__ import annotations

from slurm_llm._usage import UsageRecord
from slurm_llm.jobs._job_hours import JobHours
from slurm_llm.router._chargeback import UNUSED, share_out


def record(key: str, account: str | None, deployment: str | None, tokens: int) -> UsageRecord:
    return UsageRecord(
        at=0.0, key=key, account=account, model="m", endpoint="/v1/chat/completions",
        priority="interactive", status=200, prompt_tokens=tokens // 2,
        completion_tokens=tokens - tokens // 2, latency_s=0.1, replica="http://n1:8000",
        deployment=deployment, job="1",
    )  # fmt: skip


RECORDS = [
    record("alice", "physics", "chat", 300),
    record("bob", "physics", "chat", 100),
    record("carol", "chemistry", "chat", 400),
    record("carol", "chemistry", "code", 100),
    record("dave", None, None, 50),  # a --backend URL: no deployment
]
JOBS = [
    JobHours("11", "chat", 4.0, 8.0, "sacct"),  # chat: 6 GPU-h and 10 CPU-h in two jobs
    JobHours("12", "chat", 2.0, 2.0, "sacct"),
    JobHours("21", "code", 2.0, 1.0, "ledger"),
    JobHours("31", "idle", 1.0, 4.0, "sacct"),  # nobody used it
]


def charges(by: str) -> dict[str, tuple[int, float, float]]:
    report = share_out(RECORDS, JOBS, by)
    return {
        c.group: (c.tokens, round(c.gpu_hours, 9), round(c.cpu_hours, 9)) for c in report.charges
    }


def test_hours_go_to_accounts_by_their_share_of_each_deployments_tokens() -> None:
    assert charges("account") == {
        # chat: 400 of 800 tokens = 1/2 of 6 GPU-h and 10 CPU-h
        "physics": (400, 3.0, 5.0),
        # chat: the other 1/2 (3, 5), code: all of it (2, 1)
        "chemistry": (500, 5.0, 6.0),
        UNUSED: (0, 1.0, 4.0),
    }


def test_by_key_the_same_hours_are_split_finer() -> None:
    assert charges("key") == {
        "carol": (500, 5.0, 6.0),
        "alice": (300, 2.25, 3.75),  # 3/8 of chat
        "bob": (100, 0.75, 1.25),  # 1/8 of chat
        UNUSED: (0, 1.0, 4.0),
    }


def test_every_hour_is_charged_once_and_tokens_outside_deployments_are_told() -> None:
    report = share_out(RECORDS, JOBS, "account")
    assert sum(c.gpu_hours for c in report.charges) == 9.0
    assert [c.group for c in report.charges][-1] == UNUSED
    assert report.unattributed_tokens == 50
    chat = next(d for d in report.deployments if d.deployment == "chat")
    assert (chat.jobs, chat.gpu_hours, chat.tokens, chat.source) == (2, 6.0, 800, "sacct")


def test_a_deployment_without_known_hours_is_charged_none_but_its_tokens_count() -> None:
    report = share_out([record("alice", "physics", "lost", 80)], [], "account")
    assert [(c.group, c.tokens, c.gpu_hours) for c in report.charges] == [("physics", 80, 0.0)]
    assert report.deployments[0].source == "none"
