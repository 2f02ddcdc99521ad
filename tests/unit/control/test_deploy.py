"""What deploy() refuses before it submits anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_llm import DeploymentError, ModelSpec, deploy
from slurm_llm.control._controller import controller_job_name


@pytest.mark.parametrize("name", ["a/b", "a+b", "-a", "a b"])
def test_a_name_that_cannot_name_folders_and_jobs_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="cannot name a deployment"):
        deploy(ModelSpec.preset("smollm2-135m"), name=name, executor="local", home=tmp_path)
    assert not (tmp_path / "deployments").exists()


def test_no_deployment_name_gives_another_deployments_controller_job_name() -> None:
    # Replica jobs are named slurm-llm-NAME; a deployment called "controller+x" is refused.
    assert controller_job_name("x") == "slurm-llm-controller+x"
    with pytest.raises(DeploymentError):
        deploy(ModelSpec.preset("smollm2-135m"), name="controller+x", executor="local")
