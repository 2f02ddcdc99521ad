"""Generate → critique (one critic per law, concurrently) → revise, with a durable verdict log
and graceful degradation under load."""

from slurm_llm._public import present_as_public
from slurm_llm.tribunal._client import RouterClient, TribunalError, run_tribunal
from slurm_llm.tribunal._laws import Law, LawBook, law_books
from slurm_llm.tribunal._log import VerdictLog
from slurm_llm.tribunal._tribunal import Round, Tribunal, TribunalConfig, TribunalResult
from slurm_llm.tribunal._verdicts import Verdict, read_verdict

__all__ = [
    "Law",
    "LawBook",
    "Round",
    "RouterClient",
    "Tribunal",
    "TribunalConfig",
    "TribunalError",
    "TribunalResult",
    "Verdict",
    "VerdictLog",
    "law_books",
    "read_verdict",
    "run_tribunal",
]

present_as_public(__name__, globals(), __all__)
