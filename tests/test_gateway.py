"""The gateway in front of the model replicas, with a stand-in for Ray Serve's handle: a request whose replica died
before any of its answer was sent goes to another replica; when none takes it, a 503 in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json

import pytest
from ray.exceptions import RayActorError
from starlette.requests import Request

from tuneforge.serve import gateway
from tuneforge.serve.gateway import Gateway


class Replicas:
    """Ray Serve's handle to the model deployment: each call is answered by the next of `outcomes` (an answer's
    parts, or an exception a dead replica raises, possibly after some parts)."""

    def __init__(self, *outcomes):
        self.outcomes, self.calls = list(outcomes), 0

    def options(self, **_):
        return self

    @property
    def forward(self):
        return self

    def remote(self, call, body):
        self.calls += 1
        return Answer(self.outcomes.pop(0))

    async def drain(self, response):
        return b"".join([chunk async for chunk in response.body_iterator])


class Answer:
    def __init__(self, parts):
        self.parts = list(parts) if isinstance(parts, list) else [parts]

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.parts:
            raise StopAsyncIteration
        part = self.parts.pop(0)
        if isinstance(part, BaseException):
            raise part
        return part

    def cancel(self):
        pass


def request(body: bytes = b'{"model": "m"}') -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
             "headers": [(b"content-type", b"application/json")]}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


JSON = [("content-type", "application/json"), ("content-length", "11")]
ANSWER = [(200, JSON), b'{"ok": ', b"true}"]


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch):
    monkeypatch.setattr(gateway, "RETRY_PAUSES_S", (0.0, 0.0, 0.0))


def test_a_request_whose_replica_died_is_answered_by_another():
    replicas = Replicas([RayActorError()], [(200, JSON), b'{"ok": ', RayActorError()], ANSWER)
    response = asyncio.run(Gateway(replicas)(request()))
    assert response.status_code == 200 and json.loads(response.body) == {"ok": True}
    assert replicas.calls == 3  # died before answering, died mid-answer (nothing sent yet), answered
    assert response.headers["content-length"] == str(len(response.body))  # the replica's own is not relayed


def test_when_no_replica_takes_it_the_answer_is_a_503_saying_to_retry():
    replicas = Replicas(*[[RayActorError()]] * 4)
    response = asyncio.run(Gateway(replicas)(request()))
    error = json.loads(response.body)["error"]
    assert response.status_code == 503 and error["code"] == "replica_unavailable" and "retry" in error["message"]
    assert replicas.calls == 4  # the first try and one after each pause


def test_a_stream_under_way_when_its_replica_dies_ends_with_the_error_event_and_is_not_sent_again():
    events = [(200, [("content-type", "text/event-stream")]), b"data: {}\n\n", RayActorError()]
    replicas = Replicas(events, ANSWER)
    response = asyncio.run(Gateway(replicas)(request()))
    body = asyncio.run(replicas.drain(response)).decode()
    assert response.status_code == 200 and body.startswith("data: {}\n\n")
    assert json.loads(body.split("data: ")[2])["error"]["code"] == "replica_unavailable"
    assert replicas.calls == 1  # the client already has part of the answer: a second try would repeat it
