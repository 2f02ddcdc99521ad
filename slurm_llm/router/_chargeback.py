"""The chargeback report: the GPU- and CPU-hours each deployment's jobs held in a period, shared
out to accounts (or keys) by their share of the tokens that deployment served.

Usage records say which deployment answered each request; ``jobs/_job_hours`` says what that
deployment's jobs held. A deployment's hours go to the groups that used it in proportion to
their tokens (prompt and completion alike: both occupy the GPUs). Hours of a deployment that
served no tokens in the period are reported as unused rather than spread over the others, and
tokens from replicas outside any deployment (``--backend`` URLs, records older than this
report) are counted but charged no hours; the report says how many.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from slurm_llm._usage import UsageRecord, read_usage
from slurm_llm.jobs._job_hours import JobHours, deployment_jobs_hours
from slurm_llm.node._job_ledger import read_job_spans

UNUSED = "(unused)"
NO_ACCOUNT = "(no account)"
CHARGE_GROUPS: dict[str, Callable[[UsageRecord], str]] = {
    "account": lambda r: r.account or NO_ACCOUNT,
    "key": lambda r: r.key,
}


@dataclass
class Charge:
    """One group's tokens and hours (one row of the report)."""

    group: str
    tokens: int = 0
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0


@dataclass
class DeploymentHours:
    deployment: str
    source: str
    jobs: int = 0
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    tokens: int = 0


@dataclass
class Chargeback:
    charges: list[Charge]  # most GPU-hours first, then CPU-hours; unused hours last
    deployments: list[DeploymentHours]
    unattributed_tokens: int = 0  # served by replicas outside any deployment
    by: str = "account"
    notes: list[str] = field(default_factory=list)


def share_out(records: Iterable[UsageRecord], jobs: Iterable[JobHours], by: str) -> Chargeback:
    """Each deployment's hours shared by token share (the figures the report shows)."""
    group_of = CHARGE_GROUPS[by]
    deployments: dict[str, DeploymentHours] = {}
    for job in jobs:
        hours = deployments.setdefault(job.deployment, DeploymentHours(job.deployment, job.source))
        hours.jobs += 1
        hours.gpu_hours += job.gpu_hours
        hours.cpu_hours += job.cpu_hours
    tokens: dict[str, dict[str, int]] = {}  # deployment -> group -> tokens
    unattributed = 0
    for record in records:
        if record.deployment is None:
            unattributed += record.tokens
            continue
        by_group = tokens.setdefault(record.deployment, {})
        by_group[group_of(record)] = by_group.get(group_of(record), 0) + record.tokens
    charges: dict[str, Charge] = {}
    for name in sorted({*deployments, *tokens}):
        hours = deployments.setdefault(name, DeploymentHours(name, "none"))
        used = tokens.get(name, {})
        hours.tokens = total = sum(used.values())
        if not total and not (hours.gpu_hours or hours.cpu_hours):
            continue
        for group, count in used.items() if total else [(UNUSED, 1)]:
            charge = charges.setdefault(group, Charge(group))
            charge.tokens += count if total else 0
            share = count / total if total else 1.0
            charge.gpu_hours += hours.gpu_hours * share
            charge.cpu_hours += hours.cpu_hours * share
    ranked = sorted(charges.values(), key=lambda c: (c.group == UNUSED, -c.gpu_hours, -c.cpu_hours))
    return Chargeback(ranked, sorted(deployments.values(), key=lambda d: d.deployment),
                      unattributed, by)  # fmt: skip


def chargeback_report(folder: Path, since: float, until: float, by: str) -> Chargeback:
    """The report for ``[since, until]`` from the usage records in ``folder``, the launchers'
    ledger in ``folder/jobs`` and, where it answers, ``sacct``."""
    records = [r for r in read_usage(folder, since) if r.at <= until]
    ledger = folder / "jobs"
    spans = read_job_spans(ledger)
    used = {r.deployment for r in records if r.deployment is not None}
    ran = {s.deployment for s in spans if s.ended >= since and s.started <= until}
    report = share_out(records, deployment_jobs_hours(used | ran, since, until, spans), by)
    if unknown := [d.deployment for d in report.deployments if d.source == "none"]:
        report.notes.append(
            f"no job hours found for {', '.join(unknown)} (not in sacct, no ledger in "
            f"{ledger}): their tokens are counted, no hours charged"
        )
    if report.unattributed_tokens:
        report.notes.append(
            f"{report.unattributed_tokens} tokens came from replicas outside any deployment "
            "(--backend URLs): counted in usage, charged no hours"
        )
    return report
