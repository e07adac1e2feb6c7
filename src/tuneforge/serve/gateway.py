"""The HTTP front of the Ray Serve application: a light ingress deployment that hands each request to a model
replica and streams the answer back.

Why not let Ray Serve's proxy call the model replicas directly: when a replica dies mid-request (killed for
memory, a crash in native code), the proxy answers 500 with Ray's internal error text. Here the gateway sees the
replica's death as an exception. A request none of whose answer has reached the client yet is sent again (Ray
Serve routes it to a replica that is alive; generation has no side effects), a few times over a few seconds; when
no replica can take it, the answer is what the API promises: a 503 in OpenAI's error shape (or, inside a stream
already under way, OpenAI's in-stream error event). Ray Serve restarts the replica that died.

The model replica runs the FastAPI app in its own process through `asgi_exchange`: the request goes in as ASGI
messages and the response comes out as (status, headers) followed by body chunks, which travel over a Ray Serve
streaming handle call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

REPLICA_GONE = "the model replica answering this request stopped ({cause}); Ray Serve restarts it: retry"
RETRY_PAUSES_S = (0.2, 0.5, 1.0, 2.0)  # between tries of a request whose replica died: ~4 s in all, then a 503
HOP_HEADERS = {"content-length", "transfer-encoding", "connection"}


def request_call(request: Any) -> dict[str, Any]:
    """What a model replica needs of an HTTP request, as plain data."""
    return {"method": request.method, "path": request.url.path, "query": request.url.query,
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]}


async def asgi_exchange(app: Any, call: dict[str, Any], body: bytes) -> AsyncIterator[Any]:
    """Run one HTTP request through the ASGI `app` in this process: yields (status, headers), then body chunks.
    Closing the iterator early tells the app the client left."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": call["method"],
             "scheme": "http", "path": call["path"], "raw_path": call["path"].encode(), "root_path": "",
             "query_string": call["query"].encode(), "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
             "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in call["headers"]]}
    outbox: asyncio.Queue = asyncio.Queue()
    left = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await outbox.put(message)

    finished = object()
    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _: outbox.put_nowait(finished))
    try:
        while (message := await outbox.get()) is not finished:
            if message["type"] == "http.response.start":
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                yield message["status"], headers
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    break
        if task.done() and task.exception() is not None:
            raise task.exception()
    finally:
        left.set()
        if not task.done():
            await asyncio.wait({task}, timeout=5)  # the app's own cleanup (a stream releasing its model)
        if not task.done():
            task.cancel()


def replica_gone_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)


def error_body(cause: BaseException) -> dict[str, Any]:
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
    return {"error": {"message": REPLICA_GONE.format(cause=f"{type(cause).__name__}: {first_line}"),
                      "type": "server_error", "param": None, "code": "replica_unavailable"}}


class Gateway:
    """The ingress deployment: no model, no CPU of its own; `models` is the handle of the model deployment."""

    def __init__(self, models: Any):
        self.models = models

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response, StreamingResponse

        body, call = await request.body(), request_call(request)
        gone = replica_gone_errors()
        for pause in (*RETRY_PAUSES_S, None):
            try:
                status, headers, answer, content = await self.exchange(call, body)
                break
            except gone as exc:  # nothing of the answer was sent: another replica may take it
                if pause is None:
                    return JSONResponse(error_body(exc), status_code=503)
                await asyncio.sleep(pause)
        if content is None:
            return StreamingResponse(relay(answer, gone), status_code=status, headers=headers)
        return Response(content, status_code=status, headers=headers)

    async def exchange(self, call: dict[str, Any], body: bytes) -> tuple[int, dict[str, str], Any, bytes | None]:
        """Status, headers, and either the stream of an event-stream answer (content None) or the whole content."""
        answer = self.models.options(stream=True).forward.remote(call, body)
        status, headers = await answer.__anext__()
        headers = {k: v for k, v in headers if k.lower() not in HOP_HEADERS}
        if headers.get("content-type", "").startswith("text/event-stream"):
            return status, headers, answer, None
        return status, headers, None, b"".join([chunk async for chunk in answer])


async def relay(answer: Any, gone: tuple[type[BaseException], ...]) -> AsyncIterator[bytes]:
    """A stream's chunks; if the replica dies mid-stream, OpenAI's in-stream error event ends it."""
    try:
        async for chunk in answer:
            yield chunk
    except gone as exc:
        yield f"data: {json.dumps(error_body(exc))}\n\n".encode()
    finally:
        answer.cancel()  # the client left early: the replica stops generating
