"""``slurm-llm bench run`` against real llama.cpp replicas: through the router, directly, and
through a front-end job found by its published address."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slurm_llm._files import write_atomic
from slurm_llm.bench import load_run
from slurm_llm.cli import main
from slurm_llm.jobs._front_end_job import FrontEndAddress, address_path
from slurm_llm.router import RouterThread

pytestmark = pytest.mark.llamacpp


def only_run(folder: Path) -> Path:
    [path] = folder.glob("*.json")
    return path


def test_a_sweep_through_the_router_sizes_prompts_in_tokens_and_saves_everything(
    router: RouterThread, tmp_path: Path
) -> None:
    argv = ["bench", "run", "--url", router.url, "--front-end", "router", "--replicas", "2"]
    argv += ["--prompt-tokens", "160", "--output-tokens", "8", "--concurrency", "1,2"]
    assert main([*argv, "--requests", "4", "--out", str(tmp_path), "--label", "t"]) == 0
    run = load_run(only_run(tmp_path))
    assert [level.concurrency for level in run.levels] == [1, 2]
    for level in run.levels:
        assert level.completed == level.requests == 4
        assert level.mean_output_tokens == 8  # ignore_eos: every answer as long as asked
        assert level.mean_prompt_tokens == pytest.approx(160, rel=0.1)
        assert level.ttft.p50 and level.tpot.p50 and level.output_token_throughput > 0
    assert (run.target.model, run.target.front_end) == ("smollm2", "router")
    assert run.saturation.rule and run.machine["cores"] == os.cpu_count()
    for suffix in (".csv", "-latency.png", "-throughput.png"):
        assert (tmp_path / f"{only_run(tmp_path).stem}{suffix}").exists()


def test_poisson_arrivals_straight_to_the_replicas(
    router: RouterThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "run", "--deployment", "shared-smollm2", "--workload", "short-chat"]
    argv += ["--rate", "2,4", "--requests", "4", "--output-tokens", "4", "--no-plots"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    run = load_run(only_run(tmp_path))
    assert run.target.front_end == "direct" and len(run.target.urls) == 2
    assert run.target.engine == "llamacpp" and run.target.engine_version  # from /props
    assert [level.rate for level in run.levels] == [2, 4]
    assert all(level.completed == 4 for level in run.levels)
    assert "req/s" in capsys.readouterr().out


def test_a_front_end_job_is_found_by_name_and_a_wrong_model_is_refused(
    router: RouterThread, slurm_llm_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = FrontEndAddress(
        kind="router", name="bench", url=router.url, job_id="0", node="here", pid=1, started=0
    )
    write_atomic(address_path("bench", slurm_llm_home), address.model_dump_json())
    argv = ["bench", "run", "--front-end-job", "bench", "--workload", "short-chat", "--no-plots"]
    assert main([*argv, "--model", "gpt-9", "--out", str(tmp_path)]) == 1
    assert "does not serve 'gpt-9'; it serves smollm2" in capsys.readouterr().err
    argv += ["--concurrency", "2", "--requests", "2", "--output-tokens", "4"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert load_run(only_run(tmp_path)).target.front_end == "router"
