"""The errors of the nginx front end, so the CLI prints them without a traceback."""

from slurm_llm._errors import SlurmLLMError


class NginxError(SlurmLLMError, RuntimeError):
    """nginx could not be installed, configured, started, reloaded or stopped; says why."""


class NginxConfigError(NginxError, ValueError):
    """A configuration that nginx cannot express (a model name, an address or a key)."""
