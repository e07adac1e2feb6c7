"""The API's request bodies as OpenAI's clients send them (the openai SDK, LangChain, LiteLLM, agent frameworks), and
what becomes of each field: used, translated into what the models take (content parts to text, the `developer`
role to `system`), or refused with a 400 that names the field. Nothing a client asks for is silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.data.causal import ROLES
from tuneforge.logprobs import MAX_TOP_LOGPROBS


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `name` (a participant's name) changes nothing for these models
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[Any] | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, logprobs: null, ...)
    model: str
    max_tokens: int | None = Field(None, ge=0)  # 0: score the prompt only (completions with echo)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None  # include_usage: a last chunk with the token counts, as OpenAI's
    response_format: ResponseFormat | None = None
    # chat: logprobs true and top_logprobs 0-20; completions: logprobs 0-20 (the top tokens at each position)
    logprobs: bool | int | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # OpenAI's fields this server does not do: taken at their "off" value, refused (400 naming them) otherwise
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    # OpenAI's fields that would change the answer of a model that can do them; these text models cannot
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: str | None = None
    # taken and without effect here, as with OpenAI where they only label or route a request: user, metadata,
    # store, service_tier, parallel_tool_calls, safety_identifier, prompt_cache_key


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)

    def top_logprobs_asked(self) -> int | None:
        """None: no logprobs; else how many of the likeliest tokens to list at each position."""
        if self.logprobs is not None and not isinstance(self.logprobs, bool):
            raise ApiError(400, "logprobs: true or false for chat completions; the number of top tokens goes in "
                                "top_logprobs", param="logprobs")
        if not self.logprobs:
            if self.top_logprobs:
                raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
            return None
        return self.top_logprobs or 0


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # type: ignore[assignment]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    input: str | list[str]
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    fallback: str | None = None


class TagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    input: str | list[str]
    aggregation: str = "first"  # checked against predict_tokens.AGGREGATIONS, the tagger's own list


NO_TOOLS = ("the models served here were not trained to call tools; for structured answers send response_format "
            "json_schema (answers are then constrained to the schema)")
# field -> why it is refused; each is taken when absent or at its "off" value
NOT_DONE = {
    "presence_penalty": "penalties are not applied by this server; send 0",
    "frequency_penalty": "penalties are not applied by this server; send 0",
    "logit_bias": "logit biases are not applied by this server",
    "best_of": "this server generates one candidate per request; send best_of = 1",
    "suffix": "insertion (a suffix after the completion) is not done by this server",
    "audio": "the models served here read and write text only",
    "prediction": "predicted outputs (speculative decoding from a given text) are not used by this server",
    "web_search_options": "the models served here do not search the web",
    "reasoning_effort": "the models served here are not reasoning models (no effort to set)",
}


ASKED_BY_PRESENCE = ("web_search_options",)  # {} asks for a web search with its default settings


def refuse_unsupported(body: GenerationRequest) -> None:
    """A 400 for the first field set to something this server does not do."""
    if body.modalities and set(body.modalities) != {"text"}:
        raise ApiError(400, f"modalities {body.modalities}: the models served here read and write text only; send "
                            "[\"text\"]", param="modalities")
    for field, why in NOT_DONE.items():
        value = getattr(body, field, None)
        off = value in (None, 1) if field == "best_of" else value is None if field in ASKED_BY_PRESENCE else not value
        if not off:
            raise ApiError(400, f"{field}: {why}", param=field)
    for tools, choice in (("tools", "tool_choice"), ("functions", "function_call")):
        if getattr(body, tools) and getattr(body, choice) != "none":
            raise ApiError(400, f"{tools}: tool calls are not supported: {NO_TOOLS} (or send {choice}: \"none\")",
                           param=tools)


def chat_prompt(messages: list[Message]) -> list[dict[str, str]]:
    """The conversation as the chat template takes it: text content, the roles training used."""
    prompt = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = "system" if message.role == "developer" else message.role  # OpenAI's newer name for it
        if message.tool_calls or role in ("tool", "function"):
            raise ApiError(400, f"{where}: tool calls and tool results are not supported: {NO_TOOLS}", param=where)
        if role not in ROLES:
            raise ApiError(400, f"unknown role {message.role!r}: messages take {', '.join(ROLES)} (and developer, "
                                "read as system)", param="messages")
        prompt.append({"role": role, "content": message_text(message, role, where)})
    return prompt


def message_text(message: Message, role: str, where: str) -> str:
    if message.content is None:
        if role != "assistant":
            raise ApiError(400, f"{where}.content: null content is allowed for assistant messages only",
                           param=f"{where}.content")
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for number, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"{where}.content[{number}]: a {part.type!r} part; the models served here read text "
                                "only (parts of type 'text')", param=f"{where}.content")
        texts.append(part.text)
    return "\n".join(texts)


def completion_prompts(prompt: str | list[Any], limit: int) -> list[Any]:
    """The prompts of a completions request, each a text (continued as it is, no chat template) or a list of token
    ids (lm-eval sends those), 1 to `limit` of them."""
    from tuneforge.generate import Continuation

    if isinstance(prompt, str):
        return [Continuation(prompt)]
    if prompt and all(isinstance(item, int) for item in prompt):
        return [list(prompt)]
    if not prompt or len(prompt) > limit:
        raise ApiError(400, f"prompt holds {len(prompt)} prompts; send 1 to {limit}", param="prompt")
    if any(isinstance(item, list) and not item for item in prompt):
        raise ApiError(400, "prompt: an empty list of token ids", param="prompt")
    return [Continuation(item) if isinstance(item, str) else list(item) for item in prompt]
