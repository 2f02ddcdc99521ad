"""One module per inference engine; ``get_engine`` maps a spec's engine name to it."""

from slurm_llm._errors import SpecError
from slurm_llm._public import present_as_public
from slurm_llm.engines._base import Engine, LaunchContext
from slurm_llm.engines.llamacpp import LlamaCppEngine
from slurm_llm.engines.tgi import TGIEngine
from slurm_llm.engines.vllm import VLLMEngine

ENGINES: dict[str, type[Engine]] = {
    engine.name: engine for engine in (VLLMEngine, TGIEngine, LlamaCppEngine)
}


def get_engine(name: str) -> Engine:
    try:
        return ENGINES[name]()
    except KeyError:
        raise SpecError(f"unknown engine {name!r}; available: {', '.join(ENGINES)}") from None


__all__ = ["ENGINES", "Engine", "LaunchContext", "get_engine"]

present_as_public(__name__, globals(), __all__)
