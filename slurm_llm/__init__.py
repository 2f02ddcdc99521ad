"""Serve large language models on a SLURM cluster (or this machine) from a few lines of Python.

from slurm_llm import ModelSpec, deploy
with deploy(ModelSpec.preset("smollm2-135m"), replicas=2) as d:
    print(d.endpoints)
"""

from slurm_llm._errors import DeploymentError, EngineError, SlurmLLMError, SpecError
from slurm_llm._public import present_as_public
from slurm_llm._registry import EndpointRecord, Registry
from slurm_llm.control._deployment import (
    Deployment,
    ReplicaStatus,
    attach,
    deploy,
    list_deployments,
)
from slurm_llm.spec._model_spec import Autoscale, ModelSpec, SlurmOptions, preset_files

__version__ = "0.1.0"

__all__ = [
    "Autoscale",
    "Deployment",
    "DeploymentError",
    "EndpointRecord",
    "EngineError",
    "ModelSpec",
    "Registry",
    "ReplicaStatus",
    "SlurmLLMError",
    "SlurmOptions",
    "SpecError",
    "__version__",
    "attach",
    "deploy",
    "list_deployments",
    "preset_files",
]

present_as_public(__name__, globals(), __all__)
