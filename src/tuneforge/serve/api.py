"""The HTTP API in OpenAI's shape: /v1/models, /v1/chat/completions, /v1/completions, plus /v1/classify, /v1/tag and
/health.

A plain FastAPI app over `Engines`: Ray Serve runs it on each replica (tuneforge.serve.server), and tests can run it
alone. Every failure a client can cause is an OpenAI-style JSON error with a 4xx status; nothing a request does
gives a 500 with a traceback.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from tuneforge.native import NativeCrash
from tuneforge.serve.causal import as_text, is_token_ids
from tuneforge.serve.engines import CausalModel, Engines, Job, Labeller
from tuneforge.serve.playground import add_playground, is_page_file
from tuneforge.serve.requests import (
    ApiError,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    GenerationRequest,
    ResponseFormat,
    TagRequest,
    chat_prompt,
    completion_prompts,
    refuse_unsupported,
)
from tuneforge.serve.tokens import chat_logprobs, completion_logprobs, token_pieces, tokenizer_router

BEARER = HTTPBearer(auto_error=False)  # reads the key; `guard` refuses a bad one in OpenAI's error shape, first


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_tokens: int = 1024  # cap on a request's max_tokens
    default_max_tokens: int = 256
    max_messages: int = 64
    max_inputs: int = 256  # texts per classify or tag request


ROUTES = ("/health", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/classify", "/v1/tag",
          "/tokenizer_info", "/tokenize", "/detokenize")


class RequestMetrics:
    """Where request counts, latency and token counts go; this one drops them (Ray Serve's replicas export them to
    Prometheus, tuneforge.serve.server)."""

    def request(self, route: str, status: int, seconds: float) -> None:
        """Every HTTP request: its route (`other` for unknown paths), status code and seconds to the response."""

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        """Every answered generation request."""


def build_app(engines: Engines, *, limits: Limits = Limits(), api_key: str | None = None,
              batched: Any = None, metrics: RequestMetrics | None = None, ui: bool = True) -> FastAPI:
    """`batched`: an async function from one Job to its Completion that gathers concurrent requests into batches
    (Ray Serve's `serve.batch` on a replica); without it each request generates alone. `ui`: the playground page
    at `/` (tuneforge.serve.playground)."""
    metrics = metrics or RequestMetrics()
    app = FastAPI(title="tuneforge", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's "error parsing the body": not UTF-8 JSON
            error = ApiError(400, f"the request body is not valid JSON: {exc.__cause__}")
        else:
            error = ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        error = invalid_body(exc)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(NativeCrash)
    async def engine_crashed(_request: Request, exc: NativeCrash) -> JSONResponse:
        error = ApiError(503, crash_message(exc), kind="server_error", code="engine_crashed")
        return JSONResponse(error.body(), status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        error = ApiError(500, f"internal error: {type(exc).__name__}: {str(exc)[:300]}", kind="server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        route = request.url.path if request.url.path in ROUTES else "other"
        size = request.headers.get("content-length")
        open_path = request.url.path == "/health" or (ui and is_page_file(request.url.path))
        if not open_path and not await authorized(request):  # the key first: nothing else is told
            response: Any = JSONResponse(UNAUTHORIZED.body(), status_code=401)  # to a caller without it
        # The documented body limit (Limits.max_body_bytes), refused from Content-Length before the body is read.
        elif size and size.isdigit() and int(size) > limits.max_body_bytes:
            response = JSONResponse(too_large(size, limits).body(), status_code=413)
        else:
            response = await call_next(request)
        metrics.request(route, response.status_code, time.perf_counter() - started)
        return response

    async def authorized(request: Request) -> bool:
        credentials = await BEARER(request)
        return api_key is None or bool(credentials and secrets.compare_digest(credentials.credentials.encode(),
                                                                             api_key.encode()))

    async def within_body_limit(request: Request) -> None:
        """The body limit for a chunked body, which has no Content-Length for `guard` to refuse it by."""
        size = len(await request.body())  # already read by FastAPI for the typed body
        if size > limits.max_body_bytes:
            raise too_large(size, limits)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(within_body_limit)])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": engines.ids()}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_entry(name, served, engines)
                                           for name, served in engines.served().items()]}

    @v1.get("/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        served = engines.served().get(model_id)
        if served is None:
            raise ApiError(404, f"no model {model_id!r} is served here (served: {', '.join(engines.ids()) or 'none'})",
                           param="model", code="model_not_found")
        return model_entry(model_id, served, engines)

    @v1.post("/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        served = served_model(engines, body.model, "chat")
        if len(body.messages) > limits.max_messages:
            raise ApiError(400, f"{len(body.messages)} messages; the limit is {limits.max_messages}", param="messages")
        prompt = chat_prompt(body.messages)
        system = served.system_prompt
        if system and prompt[0]["role"] != "system":  # the run trained every row with it, as its Modelfile sets it
            prompt.insert(0, {"role": "system", "content": system})
        return await respond(engines, served, body, [prompt], limits, chat=True, batched=batched, metrics=metrics)

    @v1.post("/completions")
    async def completions(body: CompletionRequest) -> Any:
        served = served_model(engines, body.model, "chat")
        return await respond(engines, served, body, completion_prompts(body.prompt, limits.max_inputs), limits,
                             chat=False, batched=batched, metrics=metrics)

    @v1.post("/classify")
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        from tuneforge.predict import apply_threshold

        classifier = served_model(engines, body.model, "classify")
        texts = input_texts(body.input, limits)
        if body.fallback is not None and body.fallback not in classifier.predictor.labels:
            raise ApiError(400, f"fallback {body.fallback!r} is not one of the labels "
                                f"{', '.join(classifier.predictor.labels)}", param="fallback")
        predictions = await run_in_threadpool(classifier.predictor.predict, texts)
        predictions = apply_threshold(predictions, body.threshold, body.fallback)
        return {"object": "list", "model": body.model,
                "data": [{"index": i, **p.to_dict()} for i, p in enumerate(predictions)]}

    @v1.post("/tag")
    async def tag(body: TagRequest) -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        from tuneforge.predict_tokens import AGGREGATIONS

        tagger = served_model(engines, body.model, "tag")
        texts = input_texts(body.input, limits)
        if body.aggregation not in AGGREGATIONS:
            raise ApiError(400, f"unknown aggregation {body.aggregation!r}; use one of {', '.join(AGGREGATIONS)}",
                           param="aggregation")
        found = await run_in_threadpool(tagger.predictor.predict, texts, body.aggregation)
        return {"object": "list", "model": body.model,
                "data": [{"index": i, "entities": [entity.to_dict() for entity in entities]}
                         for i, entities in enumerate(found)]}

    app.include_router(v1)
    app.include_router(tokenizer_router(engines, served_model))
    if ui:
        add_playground(app, engines.samples, key_required=api_key is not None)
    return app


UNAUTHORIZED = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                        kind="authentication_error", code="invalid_api_key")


def too_large(size: int | str, limits: Limits) -> ApiError:
    return ApiError(413, f"request body is {size} bytes; the limit is {limits.max_body_bytes}",
                    code="request_too_large")


def invalid_body(exc: RequestValidationError) -> ApiError:
    """FastAPI's 422 for a request body, as this API's 400: its first error, named by the field it is about."""
    first = exc.errors()[0]
    loc = tuple(first["loc"][1:] if first["loc"][:1] == ("body",) else first["loc"])
    if first["type"] == "json_invalid" or (first["type"] == "missing" and not loc):  # not JSON, or no body at all
        decode = json.JSONDecodeError(first.get("ctx", {}).get("error", "Expecting value"),
                                      exc.body if isinstance(exc.body, str) else "", loc[0] if loc else 0)
        return ApiError(400, f"the request body is not valid JSON: {decode}")
    if not loc and isinstance(first.get("input"), bytes):  # FastAPI decodes JSON only when the client says it is
        return ApiError(400, "the request body is not JSON: send it with 'Content-Type: application/json'")
    where = ".".join(str(part) for part in loc) or None
    return ApiError(400, f"{where or 'body'}: {first['msg']}", param=where)


def model_entry(name: str, served: CausalModel | Labeller, engines: Engines) -> dict[str, Any]:
    """One model as /v1/models lists it: OpenAI's fields, and tuneforge's card."""
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "tuneforge",
            "tuneforge": model_card(served, has_samples=name in engines.samples)}


def model_card(served: CausalModel | Labeller, *, has_samples: bool = False) -> dict[str, Any]:
    """What a playground needs to know of a model, beyond OpenAI's fields of /v1/models (its clients ignore this
    one): the endpoint that answers it (`kind`: chat, classify or tag), its engine (torch or llama.cpp), the system
    prompt and answer schema a chat model applies, the labels a classifier gives or the entity types a tagger finds,
    the longest input in tokens it takes at once, and whether its run's validation rows can be fetched
    (`GET /ui/samples/{id}`)."""
    chat = isinstance(served, CausalModel)
    return {"kind": served.kind, "engine": served.engine,
            "system_prompt": served.system_prompt if chat else None,
            "answer_schema": served.answer_schema if chat else None,
            "labels": None if chat else served.labels,
            "context_length": served.context_length, "has_samples": has_samples}


KIND_NOUNS = {"chat": "generation", "classify": "classification", "tag": "tagging"}
# What a model of each kind is and where to send it, for a request that reached another endpoint.
KIND_ENDPOINTS = {"chat": "a chat model: send it to /v1/chat/completions or /v1/completions",
                  "classify": "a classifier: send its texts to /v1/classify",
                  "tag": "a tagger: send its texts to /v1/tag"}


def served_model(engines: Engines, name: str, kind: str) -> Any:
    """The model `name` when it is of the `kind` this endpoint answers; a 400 naming its endpoint when it is
    another's, a 404 listing this endpoint's models when nothing of that name is served."""
    models = engines.served()
    served = models.get(name)
    if served is None:
        ids = ", ".join(model_id for model_id, model in models.items() if model.kind == kind) or "none"
        raise ApiError(404, f"no {KIND_NOUNS[kind]} model {name!r} is served here (served: {ids})", param="model",
                       code="model_not_found")
    if served.kind != kind:
        raise ApiError(400, f"{name!r} is {KIND_ENDPOINTS[served.kind]}", param="model")
    return served


def input_texts(given: str | list[str], limits: Limits) -> list[str]:
    """The texts of a classify or tag request: one or a list, 1 to `limits.max_inputs` of them."""
    texts = [given] if isinstance(given, str) else given
    if not texts or len(texts) > limits.max_inputs:
        raise ApiError(400, f"input holds {len(texts)} texts; send 1 to {limits.max_inputs}", param="input")
    return texts


async def respond(engines: Engines, served: CausalModel, body: GenerationRequest, prompts: list[Any],
                  limits: Limits, *, chat: bool, batched: Any, metrics: RequestMetrics) -> Any:
    """`prompts`: a chat's one conversation, or a completions request's texts or token-id lists (one choice each)."""
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    refuse_unsupported(body)
    if body.n != 1:
        raise ApiError(400, f"n = {body.n}: this server generates one choice per request; send n = 1 (or several "
                            "requests: concurrent ones are batched)", param="n")
    top = logprobs_asked(body, chat)
    echo = bool(getattr(body, "echo", False))
    if body.stream and (top is not None or echo or len(prompts) > 1):
        field = "logprobs" if top is not None else "echo" if echo else "prompt"
        raise ApiError(400, f"{field}: not streamed by this server; send stream: false (or one prompt without "
                            "logprobs and echo)", param=field)
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if asked == 0 and not echo:
        raise ApiError(400, "max_tokens 0 generates nothing: it scores the prompt only, with echo: true",
                       param="max_tokens")
    if asked is not None and asked > limits.max_tokens:
        raise ApiError(400, f"max_tokens {asked} is over this server's limit of {limits.max_tokens}",
                       param="max_tokens")
    prompt_ids = [await run_in_threadpool(read_prompt, served, prompt) for prompt in prompts]
    settings, stops = generation_settings(body, served, max(len(ids) for ids in prompt_ids), asked, limits)
    constraint = response_constraint(body.response_format, served)
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    if body.stream:
        outcome: list[Any] = []
        pieces = engines.stream(served, as_text(served, prompts[0]), settings, seed=body.seed, constraint=constraint,
                                outcome=outcome)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        prompt_tokens = len(prompt_ids[0])
        events = sse_events(ident, served.model_id, pieces, outcome, stops, chat=chat,
                            on_end=lambda tokens: metrics.tokens(served.model_id, prompt_tokens, tokens),
                            usage_prompt_tokens=prompt_tokens if include_usage else None)
        return StreamingResponse(iterate_in_threadpool(events), media_type="text/event-stream")
    completions = await generate(engines, served, prompts, settings, body.seed, constraint, batched)
    choices = []
    for index, (prompt, ids, completion) in enumerate(zip(prompts, prompt_ids, completions, strict=True)):
        metrics.tokens(served.model_id, len(ids), completion.new_tokens)
        text, finish = cut_at_stop(completion.text, stops, completion.finish_reason)
        choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            shown = await run_in_threadpool(prompt_text, served, prompt) if echo else ""
            choice["text"] = shown + text
        if top is not None:
            choice["logprobs"] = await answer_logprobs(engines, served, ids, completion, top, chat=chat, echo=echo)
        choices.append(choice)
    prompt_tokens = sum(len(ids) for ids in prompt_ids)
    new_tokens = sum(completion.new_tokens for completion in completions)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens, "total_tokens": prompt_tokens + new_tokens}
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": served.model_id, "choices": choices, "usage": usage}


def logprobs_asked(body: GenerationRequest, chat: bool) -> int | None:
    """None: no logprobs; else how many top tokens to list at each position."""
    if chat:
        return body.top_logprobs_asked()
    if body.top_logprobs is not None:
        raise ApiError(400, "top_logprobs is a chat completions field; completions take the number of top tokens "
                            "in logprobs", param="top_logprobs")
    return body.logprobs


def read_prompt(served: CausalModel, prompt: Any) -> list[int]:
    try:
        return served.prompt_ids(prompt)
    except NativeCrash:
        raise
    except Exception as exc:  # noqa: BLE001 - the chat template's own checks (role order, ...)
        raise ApiError(400, f"the model's chat template refused these messages: {exc}", param="messages") from None


def prompt_text(served: CausalModel, prompt: Any) -> str:
    return served.detokenize(prompt) if is_token_ids(prompt) else str(prompt)


def generation_settings(body: GenerationRequest, served: CausalModel, prompt_tokens: int, asked: int | None,
                        limits: Limits) -> tuple[Any, list[str]]:
    from tuneforge.generate import GenerationSettings

    room = served.context_length - prompt_tokens
    max_tokens = asked if asked is not None else max(1, min(limits.default_max_tokens, room))  # unasked: what fits
    if max_tokens > room:
        raise ApiError(400, f"the prompt is {prompt_tokens} tokens and max_tokens {max_tokens}: together over the "
                            f"model's context of {served.context_length}", code="context_length_exceeded")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return GenerationSettings(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, batch_size=1,
                              stop_strings=stops), stops


async def generate(engines: Engines, served: CausalModel, prompts: list[Any], settings: Any, seed: int | None,
                   constraint: Any, batched: Any) -> list[Any]:
    """One Completion per prompt (none generated at max_tokens 0: echo scores the prompt alone)."""
    import asyncio

    from starlette.concurrency import run_in_threadpool

    from tuneforge.generate import Completion

    if settings.max_new_tokens == 0:
        return [Completion("", "length", 0) for _ in prompts]
    jobs = [Job(served, as_text(served, prompt), settings, seed=seed, constraint=constraint) for prompt in prompts]
    if batched is not None:
        return list(await asyncio.gather(*(batched(job) for job in jobs)))
    return await run_in_threadpool(engines.complete_many, jobs)


async def answer_logprobs(engines: Engines, served: CausalModel, prompt_ids: list[int], completion: Any, top: int, *,
                          chat: bool, echo: bool) -> dict[str, Any]:
    """The model's log-probabilities of the answer's tokens (a chat's: its content; a completion's: with the token
    that stopped it, and with `echo` every prompt token before them), scored in one forward pass."""
    from starlette.concurrency import run_in_threadpool

    answer = list(completion.token_ids)
    if not chat and completion.stop_token is not None:
        answer.append(completion.stop_token)
    start = 0 if echo else len(prompt_ids)
    scores = await run_in_threadpool(engines.score, served, prompt_ids + answer, start, top)
    pieces = await run_in_threadpool(token_pieces, served, scores)
    if chat:
        return chat_logprobs(pieces, scores)
    offset = 0 if echo else len(await run_in_threadpool(served.detokenize, prompt_ids))
    return completion_logprobs(pieces, scores, offset)


ANSWER_SCHEMA_NAME = "answer_schema"  # json_schema with this name and no schema: the run's inferred answer schema


def response_constraint(response_format: ResponseFormat | None, served: CausalModel) -> Any:
    from tuneforge.constrain import ANY_JSON, JsonConstraint, check_schema
    from tuneforge.errors import TuneforgeError

    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return JsonConstraint(ANY_JSON, "a JSON value")
    spec = response_format.json_schema or {}
    schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else None
    if schema is None and spec.get("name") == ANSWER_SCHEMA_NAME:
        if not served.answer_schema:
            raise ApiError(400, f"model {served.model_id!r} has no answer schema (one is inferred only when every "
                                "training target is a JSON object); send a schema", param="response_format")
        return JsonConstraint(served.answer_schema, "the run's answer schema")
    if schema is None:
        raise ApiError(400, "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}, or "
                            f"{{'json_schema': {{'name': '{ANSWER_SCHEMA_NAME}'}}}} for the run's inferred answer schema",
                       param="response_format")
    try:
        check_schema(schema, "response_format")
        return JsonConstraint(schema, f"the schema {spec.get('name', '')!r}")
    except TuneforgeError as exc:
        raise ApiError(400, str(exc), param="response_format") from None


def crash_message(exc: NativeCrash) -> str:
    return f"the model's engine crashed while answering ({exc.cause}); it restarts for the next request: retry"


def cut_at_stop(text: str, stops: list[str], finish: str) -> tuple[str, str]:
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return (text[: min(positions)], "stop") if positions else (text, finish)


def sse_events(ident: str, model_id: str, pieces: Any, outcome: list[Any], stops: list[str], *, chat: bool,
               on_end: Any = None, usage_prompt_tokens: int | None = None) -> Any:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. Text is held back while it could
    still be the start of a stop string, so a stop string never reaches the client. With `usage_prompt_tokens`
    (the request's stream_options.include_usage), every chunk carries `"usage": null` and one last chunk with no
    choices carries the token counts, as OpenAI streams them."""
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        payload = {"id": ident, "object": kind, "created": created, "model": model_id, "choices": [choice]}
        if usage_prompt_tokens is not None:
            payload["usage"] = None
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def failure(exc: Exception) -> str:
        """An error after the 200 went out: OpenAI's in-stream error event (its clients raise it)."""
        crashed = isinstance(exc, NativeCrash)
        error = ApiError(503 if crashed else 500, crash_message(exc) if crashed else
                         f"internal error: {type(exc).__name__}: {str(exc)[:300]}", kind="server_error",
                         code="engine_crashed" if crashed else None)
        return f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n"

    def events() -> Any:
        yield chunk(None, None, first=True)
        sent, held, finish, received = "", "", "length", 0
        try:
            for piece in pieces:
                received += 1
                held += piece
                cut, hit = cut_at_stop(sent + held, stops, "")
                if hit:
                    held, finish = cut[len(sent):], "stop"
                    break
                safe = len(held) - longest_stop_prefix(held, stops)
                if safe > 0:
                    yield chunk(held[:safe], None)
                    sent, held = sent + held[:safe], held[safe:]
            else:
                finish = outcome[0].finish_reason if outcome else finish
        except Exception as exc:  # noqa: BLE001 - the client gets the error, the server goes on
            yield failure(exc)
            return
        finally:
            close = getattr(pieces, "close", None)
            if close:
                close()  # releases the replica's lock when the client leaves early
        if held:
            yield chunk(held, None)
        generated = outcome[0].new_tokens if outcome else received  # a stop string closes the stream early
        if on_end is not None:
            on_end(generated)
        yield chunk(None, finish)
        if usage_prompt_tokens is not None:
            usage = {"prompt_tokens": usage_prompt_tokens, "completion_tokens": generated,
                     "total_tokens": usage_prompt_tokens + generated}
            payload = {"id": ident, "object": kind, "created": created, "model": model_id, "choices": [],
                       "usage": usage}
            yield f"data: {json.dumps(payload)}\n\n"
        yield "data: [DONE]\n\n"

    return events()


def longest_stop_prefix(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` could begin a stop string."""
    return max((n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
