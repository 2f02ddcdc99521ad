"""``slurm-llm batch run`` on the local SLURM cluster: it deploys replicas, runs the batch,
writes the answers next to the input and leaves no job behind, whether the replicas are jobs
of their own or the whole run is one job (``--submit``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import cli, wait_until

pytestmark = pytest.mark.slurm


def prompts(folder: Path, count: int) -> Path:
    path = folder / "prompts.jsonl"
    path.write_text("".join(
        json.dumps({"custom_id": f"q{n}", "method": "POST", "url": "/v1/completions",
                    "body": {"model": "smollm2", "prompt": f"{n} + 1 =", "max_tokens": 3}}) + "\n"
        for n in range(count)
    ))  # fmt: skip
    return path


def our_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return [name for name in out.split() if name.startswith("slurm-llm-")]


def answered(folder: Path) -> list[str]:
    output = folder / "prompts.output.jsonl"
    return sorted(json.loads(raw)["custom_id"] for raw in output.read_text().splitlines())


def test_batch_run_deploys_finishes_and_leaves_no_job(local_slurm: object, tmp_path: Path) -> None:
    said = cli("batch", "run", str(prompts(tmp_path, 12)), "--spec", "smollm2-135m",
               "--replicas", "2", "--executor", "slurm", timeout=300)  # fmt: skip
    assert "completed 12 answered, 0 failed of 12" in said
    assert answered(tmp_path) == sorted(f"q{n}" for n in range(12))
    wait_until(lambda: our_jobs() == [], 60, "no slurm-llm job left")


def test_batch_run_as_one_job_of_its_own(local_slurm: object, tmp_path: Path) -> None:
    said = cli("batch", "run", str(prompts(tmp_path, 8)), "--spec", "smollm2-135m",
               "--executor", "slurm", "--submit")  # fmt: skip
    assert "submitted as job" in said
    wait_until((tmp_path / "prompts.output.jsonl").exists, 300, "the job's answers",
               every=1)  # fmt: skip
    wait_until(lambda: our_jobs() == [], 60, "the job to end")
    assert answered(tmp_path) == sorted(f"q{n}" for n in range(8))
