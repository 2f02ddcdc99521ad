"""The usage and chargeback reports over a real run: a llama.cpp replica holding one (fake) GPU
on the local SLURM cluster, two accounts' keys using it through a router, the job ended, then
``slurm-llm usage`` and ``slurm-llm chargeback`` checked against figures worked out here from
what the clients were told and what SLURM says the job held.
"""

from __future__ import annotations

import csv
import io
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from slurm_llm import ModelSpec, deploy
from slurm_llm._api_keys import KeysFile
from slurm_llm.jobs._job_hours import ledger_hours
from slurm_llm.node._job_ledger import job_spans_dir, read_job_spans
from slurm_llm.router import RouterConfig, RouterThread
from tests.integration.helpers import cli, wait_until

pytestmark = pytest.mark.slurm
NAME = "charged-smollm2"
CHATS = {"chargeback-physics": 2, "chargeback-chemistry": 1}  # account: requests


def csv_rows(text: str, column: str) -> dict[str, dict[str, str]]:
    return {row[column]: row for row in csv.DictReader(io.StringIO(text))}


def sacct_field(job: str, fields: str) -> list[str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "-o", fields],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return out.strip().split("|")


def test_usage_and_chargeback_reports_match_figures_worked_out_by_hand(
    local_slurm: object, slurm_llm_home: Path, tmp_path: Path
) -> None:
    started = time.time() - 5
    keys = KeysFile(tmp_path / "keys.toml")
    secrets = {account: keys.add(account, account=account) for account in CHATS}
    tokens = dict.fromkeys(CHATS, 0)  # as each client was told by the engine
    spec = ModelSpec.preset("smollm2-135m", device="cuda", gpus_per_replica=1, gpus_per_node=4)
    with deploy(spec, replicas=1, executor="slurm", name=NAME, progress=False,
                timeout=180) as deployment:  # fmt: skip
        [record] = deployment.records()
        config = RouterConfig(keys_file=keys.path)
        with RouterThread(home=slurm_llm_home, deployment=NAME, config=config) as router:
            for account, requests in CHATS.items():
                with openai.OpenAI(base_url=f"{router.url}/v1", api_key=secrets[account],
                                   max_retries=0) as client:  # fmt: skip
                    for n in range(requests):
                        reply = client.chat.completions.create(
                            model="smollm2", max_tokens=6 + n,
                            messages=[{"role": "user", "content": f"Say {n}"}],
                        )  # fmt: skip
                        assert reply.usage is not None
                        tokens[account] += reply.usage.total_tokens
    # the router has flushed its records on leaving; the job ends once cancelled
    wait_until(lambda: sacct_field(record.job_id, "End")[0] != "Unknown", 60, "the job's end")
    elapsed_s, cpus, tres = sacct_field(record.job_id, "ElapsedRaw,AllocCPUS,AllocTRES")
    assert "gres/gpu=1" in tres
    hours = int(elapsed_s) / 3600
    since = datetime.fromtimestamp(started, UTC).isoformat()

    usage = csv_rows(cli("usage", "--since", since, "--by", "account", "--csv"), "account")
    for account, requests in CHATS.items():
        assert int(usage[account]["requests"]) == requests
        assert int(usage[account]["tokens"]) == tokens[account]

    charged = csv_rows(cli("chargeback", "--since", since, "--csv"), "account")
    total = sum(tokens.values())
    for account in CHATS:
        share = tokens[account] / total
        assert int(charged[account]["tokens"]) == tokens[account]
        assert float(charged[account]["gpu_hours"]) == pytest.approx(hours * 1 * share, abs=1e-6)
        assert float(charged[account]["cpu_hours"]) == pytest.approx(
            hours * int(cpus) * share, abs=1e-6
        )
    table = cli("chargeback", "--since", since)
    assert NAME in table and "sacct" in table

    # Where SLURM keeps no accounting the launcher's ledger stands in: the same job, seen from
    # inside it, holds the same GPU for nearly as long (it starts and stops within the job).
    # SLURM counts whole seconds between start and end stamps cut to the second, so the job
    # itself may have run up to a second longer than ElapsedRaw says.
    [span] = [s for s in read_job_spans(job_spans_dir(slurm_llm_home)) if s.deployment == NAME]
    from_ledger = ledger_hours(span, started, time.time())
    assert span.job == record.job_id and span.gpus == 1
    assert hours - 10 / 3600 < from_ledger.gpu_hours < hours + 1 / 3600
