"""Errors the user can act on.

Every error raised to a researcher names what is wrong and what to do about it; these classes let
callers (the CLI in particular) tell such errors from bugs and print them without a traceback.
"""


class SlurmLLMError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class SpecError(SlurmLLMError, ValueError):
    """A model spec that cannot work, found before anything is submitted."""


class DeploymentError(SlurmLLMError, RuntimeError):
    """A deployment that failed or could not become ready."""


class EngineError(SlurmLLMError, RuntimeError):
    """An engine that could not be started or answered wrongly."""
