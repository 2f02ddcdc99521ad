"""The request bodies the router accepts, as pydantic models: checked before a replica sees them,
and the source of the published API (``/openapi.json``).

The models are permissive where the APIs are (a field they do not name passes through, and the
bytes forwarded stay the client's own) and strict where an engine would choke: a wrong type, a
role that does not exist or a number out of range is answered 400 here, naming the field,
instead of becoming a 500 from llama.cpp that would count against a healthy replica. Strict
also means no coercion: ``"max_tokens": "5"`` is refused, since the engine gets the client's
bytes, not what pydantic would have made of them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

INT32 = 2**31 - 1
M = TypeVar("M", bound=BaseModel)
Count = Annotated[int, Field(ge=1, le=INT32)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Stop = str | Annotated[list[str], Field(max_length=16)]


class Permissive(BaseModel):
    """Types checked strictly; fields not named here pass through untouched."""

    model_config = ConfigDict(strict=True, extra="allow")


class Closed(BaseModel):
    """For the router's own APIs, where an unknown field is a typo worth reporting."""

    model_config = ConfigDict(strict=True, extra="forbid")


# -- OpenAI chat completions -----------------------------------------------------------------


class TextPart(Permissive):
    type: Literal["text"]
    text: str


class RefusalPart(Permissive):
    type: Literal["refusal"]
    refusal: str


class OtherPart(Permissive):
    """Image, audio, video, file and engine-specific parts: passed on for the engine to judge
    (a text-only model answers them with an error of its own)."""

    type: str


def part_kind(part: object) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    return kind if kind in ("text", "refusal") else "other"


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[RefusalPart, Tag("refusal")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(part_kind),
]
Content = str | list[ContentPart]


class FunctionCall(Permissive):
    name: str
    arguments: str


class ToolCall(Permissive):
    id: str
    type: str  # "function", or "custom" for free-form tools
    function: FunctionCall | None = None


class Message(Permissive):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_unless_assistant(self) -> Message:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs 'content' (a string or parts)")
        return self


class FunctionDefinition(Permissive):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Permissive):
    type: str  # "function", or "custom" for free-form tools
    function: FunctionDefinition | None = None

    @model_validator(mode="after")
    def _function_has_its_definition(self) -> Tool:
        if self.type == "function" and self.function is None:
            raise ValueError("a function tool needs 'function' (its name and parameters)")
        return self


class StreamOptions(Permissive):
    include_usage: bool | None = None


class ResponseFormat(Permissive):
    type: str  # text, json_object, json_schema, or an engine's own (vLLM's structural_tag)


class Sampling(Permissive):
    """What chat and text completions share."""

    model: str = Field(description="A model the router serves (see GET /v1/models).")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    max_tokens: Count | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=INT32)] | None = None
    stop: Stop | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None


class ChatCompletionRequest(Sampling):
    """``POST /v1/chat/completions``; ``tribunal`` runs the answer past critics first."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Count | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tribunal: TribunalOptions | None = None


# -- OpenAI text completions -----------------------------------------------------------------

TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=INT32)]], Field(min_length=1)]
# An empty prompt is refused: llama.cpp hangs on one with n > 1 (seen with the fuzzer).
Text = Annotated[str, Field(min_length=1)]
Prompt = (
    Text
    | Annotated[list[Text], Field(min_length=1)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1)]
)


class CompletionRequest(Sampling):
    """``POST /v1/completions``."""

    prompt: Prompt
    suffix: str | None = None
    echo: bool | None = None
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


# -- TGI -------------------------------------------------------------------------------------


class GenerateParameters(Permissive):
    max_new_tokens: Count | None = None
    temperature: Annotated[float, Field(gt=0, le=100)] | None = None
    top_k: Annotated[int, Field(gt=0, le=INT32)] | None = None
    top_p: Annotated[float, Field(gt=0, lt=1)] | None = None
    typical_p: Annotated[float, Field(gt=0, lt=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=100)] | None = None
    frequency_penalty: Penalty | None = None
    do_sample: bool | None = None
    seed: Annotated[int, Field(ge=0, le=2**64 - 1)] | None = None
    stop: Annotated[list[str], Field(max_length=16)] | None = None
    return_full_text: bool | None = None
    details: bool | None = None
    decoder_input_details: bool | None = None
    truncate: Count | None = None
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None
    watermark: bool | None = None


class GenerateRequest(Permissive):
    """TGI's ``POST /generate``, ``/generate_stream`` and ``/`` (also under
    ``/models/{model}``)."""

    inputs: Annotated[str, Field(min_length=1)]  # TGI refuses empty inputs too
    parameters: GenerateParameters | None = None
    stream: bool | None = None


# -- The router's own APIs -------------------------------------------------------------------


class TribunalOptions(Closed):
    laws: str = Field("academic", description="A shipped law book's name.")
    only: list[str] | None = Field(None, description="Keep only these laws of the book.")
    critic_model: str | None = Field(None, description="The critics' model; default: the same.")
    max_rounds: Annotated[int, Field(ge=1, le=20)] = 3
    max_tokens: Count = 256


class TribunalRequest(TribunalOptions):
    """``POST /v1/tribunal``: generate, critique against laws, revise."""

    model: str
    prompt: str


class MapReduceRequest(Closed):
    """``POST /v1/map_reduce``: a text longer than the context, in chunks, then combined."""

    model: str
    instruction: str
    text: Annotated[str, Field(min_length=1)]
    max_tokens: Count = 256
    overlap: Annotated[int, Field(ge=0, le=INT32)] = 64
    context: Count | None = Field(None, description="Tokens per call; default: the replicas'.")
    tribunal: TribunalOptions | None = None


class BatchRequest(Closed):
    """``POST /v1/batch``: many completions in one call, answered in order."""

    model: str | None = Field(None, description="The items' model, unless an item names one.")
    endpoint: Literal["/v1/chat/completions", "/v1/completions"] = "/v1/chat/completions"
    defaults: dict[str, Any] = Field(default_factory=dict, description="Fields of every item.")
    # Items are checked one by one, so one malformed item is reported in its place.
    requests: Annotated[list[Any], Field(min_length=1, description="Request objects.")]


class BatchCreateRequest(Closed):
    """``POST /v1/batches``: run every line of an uploaded file (OpenAI's Batch API)."""

    input_file_id: str = Field(description="A file uploaded with purpose 'batch'.")
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: Literal["24h"] = "24h"
    metadata: (
        Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                  Field(max_length=16)]
        | None
    ) = None  # fmt: skip


# -- Operations ------------------------------------------------------------------------------


class ScaleRequest(Closed):
    """``POST /v1/deployments/{name}/scale``."""

    replicas: Annotated[int, Field(ge=0, le=1000)] = Field(
        description="Replicas wanted; an elastic deployment's count stays within its bounds."
    )


ChatCompletionRequest.model_rebuild()
ENDPOINT_MODELS: dict[str, type[Sampling]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


class InvalidRequest(ValueError):
    """A body that does not fit its model; ``field`` names the first wrong field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check(model: type[M], body: object) -> M:
    """``body`` as ``model``, or an error naming the field as a client writes it
    (``messages[0].role``): the deepest one, where a union's branches disagree on how deep the
    body got, since that is the branch the client meant."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        deepest = max(depth(e["loc"]) for e in errors)
        found = [e for e in errors if depth(e["loc"]) == deepest]
        field = field_path(found[0]["loc"])
        if found[0]["type"] == "missing":
            raise InvalidRequest(field, f"the field '{field}' is required") from None
        # in order, without repeats
        problems = dict.fromkeys(str(e["msg"]).removeprefix("Value error, ") for e in found)
        raise InvalidRequest(field, f"invalid '{field}': {'; or '.join(problems)}") from None


def depth(loc: tuple[int | str, ...]) -> int:
    return field_path(loc).count(".") + field_path(loc).count("[") + 1


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('messages', 0, 'role')`` → ``messages[0].role``, leaving out the names pydantic gives
    a union's branches (``str``, ``list[...]``, a model's class name, a content part's
    ``type``): the client never wrote them."""
    path = ""
    for at, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif not is_branch_name(part, loc[at - 1] if at else None, at + 1 < len(loc)):
            path += f".{part}" if path else part
    return path


def is_branch_name(part: str, before: int | str | None, more: bool) -> bool:
    if part in ("str", "int", "float", "bool") or part[:1].isupper() or "[" in part or "-" in part:
        return True
    return isinstance(before, int) and more and part in PART_TYPES


PART_TYPES = ("text", "refusal", "other")  # the content parts' tags
