"""Tokens over HTTP: the `logprobs` of chat and completion answers in OpenAI's two shapes, and the tokenizer endpoints
lm-evaluation-harness looks for at the server's root (`GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`,
in vLLM's shapes): with them, lm-eval's `local-completions` tokenizes through the served model itself and sends token
ids, so its multiple-choice scores are computed on exactly the tokens the model reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from tuneforge.logprobs import TokenScore
from tuneforge.serve.causal import CausalModel
from tuneforge.serve.requests import ApiError


def chat_logprobs(pieces: dict[int, str], scores: list[TokenScore]) -> dict[str, Any]:
    """OpenAI's chat shape: per answer token its text, logprob, bytes and the likeliest alternatives."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        return {"token": pieces[token], "logprob": logprob, "bytes": list(pieces[token].encode("utf-8"))}

    return {"content": [{**entry(s.token, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top]}
                        for s in scores], "refusal": None}


def completion_logprobs(pieces: dict[int, str], scores: list[TokenScore], offset: int) -> dict[str, Any]:
    """OpenAI's completions shape: parallel lists of tokens, their logprobs (None for the text's first token), the
    top alternatives as {token: logprob}, and each token's character offset in the returned text."""
    offsets, at = [], offset
    for score in scores:
        offsets.append(at)
        at += len(pieces[score.token])
    return {"tokens": [pieces[s.token] for s in scores], "token_logprobs": [s.logprob for s in scores],
            "top_logprobs": [None if s.logprob is None else {pieces[t]: lp for t, lp in s.top} for s in scores],
            "text_offset": offsets}


def token_pieces(served: CausalModel, scores: list[TokenScore]) -> dict[int, str]:
    """The text of every token the scores name (a token holding part of a character shows it as U+FFFD)."""
    ids = sorted({s.token for s in scores} | {t for s in scores for t, _ in s.top})
    return {token: piece.decode("utf-8", errors="replace") for token, piece in zip(ids, served.token_bytes(ids),
                                                                                    strict=True)}


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None  # rendered through the model's chat template, assistant turn opened
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]


def tokenizer_router(engines: Any, served_model: Callable[[Any, str, str], Any]) -> APIRouter:
    """`served_model(engines, name, kind)`: the API's own lookup of a model by name (its 404 and 400)."""
    router = APIRouter()

    def tokenizer_of(model: str | None) -> CausalModel:
        return served_model(engines, model, "chat") if model is not None else shared_tokenizer(engines)

    @router.get("/tokenizer_info")
    async def tokenizer_info(model: str | None = None) -> dict[str, Any]:
        served = tokenizer_of(model)
        info = await run_in_threadpool(served.special_tokens)
        return {"model": served.model_id, **info, "model_max_length": served.context_length}

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        served = tokenizer_of(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "send either prompt (a text) or messages (a chat)", param="prompt")
        if body.prompt is not None:
            ids = await run_in_threadpool(lambda: served.tokenize(body.prompt, special=body.add_special_tokens))
        else:
            from tuneforge.serve.requests import Message, chat_prompt

            messages = chat_prompt([Message.model_validate(m) for m in body.messages])
            ids = await run_in_threadpool(served.prompt_ids, messages)
        return {"tokens": ids, "count": len(ids), "max_model_len": served.context_length}

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        served = tokenizer_of(body.model)
        return {"prompt": await run_in_threadpool(served.detokenize, body.tokens)}

    return router


def shared_tokenizer(engines: Any) -> CausalModel:
    """With no model named (lm-eval names none): the served chat models' tokenizer when they all share one (a run
    and its `base` do)."""
    chat = list(engines.causal.values())
    if not chat:
        raise ApiError(404, "no model that generates is served here, so there is no tokenizer to use",
                       code="model_not_found")
    if len({served.tokenizer_identity for served in chat}) > 1:
        ids = ", ".join(served.model_id for served in chat)
        raise ApiError(400, f"the models served here ({ids}) tokenize differently: name one in 'model'",
                       param="model")
    return chat[0]
