"""The one error the local cluster raises, so the CLI prints it without a traceback."""

from slurm_llm._errors import SlurmLLMError


class ClusterError(SlurmLLMError, RuntimeError):
    """The local cluster could not be set up, started or stopped; the message says why."""
