"""The OpenAI-shaped API, served by a real HTTP server on loopback and called with the official `openai` client.

The app runs under uvicorn here (what every Ray Serve replica runs); the Ray Serve deployment itself is exercised
by the slow test at the end.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

from tests.helpers import (
    SCHEMA,
    SYSTEM_PROMPT,
    TAGGER_CONTEXT,
    LoopbackServer,
    free_port,
    http,
    prompted_copy,
    zeroed_adapter_copy,
)

openai = pytest.importorskip("openai")

LONG_TEXT = " ".join(["Aiko met Ravi in Oslo, then in Kraków on Friday."] * 6)


@pytest.fixture(scope="module")
def server(tiny_lora_run, tmp_path_factory, classifier, tagger_checkpoint):
    from tuneforge.serve import Limits, build_app, load_engines

    other = zeroed_adapter_copy(tiny_lora_run, tmp_path_factory.mktemp("serve") / "other")
    prompted = prompted_copy(tiny_lora_run, tmp_path_factory.mktemp("serve") / "prompted")
    engines = load_engines([tiny_lora_run, other, prompted, tagger_checkpoint])
    engines.classifiers[classifier.model_id] = classifier
    with LoopbackServer(build_app(engines, limits=Limits(max_tokens=64, max_body_bytes=20_000))) as running:
        running.lora_id, running.engines = tiny_lora_run.name, engines
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def say(word: str) -> list[dict]:
    return [{"role": "user", "content": f"Say {word}."}]


def test_models_lists_every_run_and_the_base(client, server):
    assert {m.id for m in client.models.list().data} == {server.lora_id, "other", "prompted", "base", "tickets",
                                                          "places"}


def test_models_tell_each_models_kind_prompt_and_labels(client, server):
    cards = {m.id: m.model_extra["tuneforge"] for m in client.models.list().data}  # the openai client keeps extras
    context = server.engines.causal["base"].context_length
    chat = {"kind": "chat", "engine": "torch", "labels": None, "context_length": context, "has_samples": True}
    assert cards["prompted"] == {**chat, "system_prompt": SYSTEM_PROMPT, "answer_schema": SCHEMA}
    assert cards[server.lora_id] == {**chat, "system_prompt": None, "answer_schema": None}
    assert cards["base"] == {**chat, "system_prompt": None, "answer_schema": None, "has_samples": False}
    assert cards["tickets"] == {"kind": "classify", "engine": "torch", "system_prompt": None, "answer_schema": None,
                                "labels": ["billing", "bug", "praise"], "context_length": 64, "has_samples": False}
    assert cards["places"] == {"kind": "tag", "engine": "torch", "system_prompt": None, "answer_schema": None,
                               "labels": ["CITY", "PERSON"], "context_length": TAGGER_CONTEXT, "has_samples": False}


def test_only_a_run_gets_its_system_prompt_not_the_base_served_from_it(client, server):
    from tuneforge.serve.causal import TorchModel

    def prompt_tokens(model: str) -> int:
        return client.chat.completions.create(model=model, messages=say("apple"), max_tokens=1).usage.prompt_tokens

    assert prompt_tokens("base") == prompt_tokens(server.lora_id) < prompt_tokens("prompted")
    # The base is served from the first LoRA run's model, whichever loaded first: it takes none of their prompts.
    prompted = server.engines.causal["prompted"].generator
    assert TorchModel("base", prompted, use_base=True).system_prompt is None


def test_chat_completion_answers_with_usage_and_finish_reason(client, server):
    answer = client.chat.completions.create(model=server.lora_id, messages=say("apple"), max_tokens=8)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 5 and 0 < answer.usage.completion_tokens <= 8
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_streaming_sends_the_same_answer_piece_by_piece(client, server):
    whole = client.chat.completions.create(model=server.lora_id, messages=say("river"), max_tokens=8)
    chunks = list(client.chat.completions.create(model=server.lora_id, messages=say("river"), max_tokens=8,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) >= 3 and streamed.strip() == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_a_stream_asked_for_usage_ends_with_the_token_counts(client, server):
    whole = client.chat.completions.create(model=server.lora_id, messages=say("river"), max_tokens=8)
    chunks = list(client.chat.completions.create(model=server.lora_id, messages=say("river"), max_tokens=8,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    plain = list(client.chat.completions.create(model=server.lora_id, messages=say("river"), max_tokens=8,
                                                stream=True))
    assert all(c.usage is None and c.choices for c in plain)  # not asked: no usage chunk


def test_completions_endpoint_continues_a_prompt(client, server):
    answer = client.completions.create(model=server.lora_id, prompt="Say apple.", max_tokens=6)
    assert answer.object == "text_completion" and answer.usage.completion_tokens > 0


def test_json_schema_answers_parse_and_match_the_schema(client, server):
    import jsonschema

    answer = client.chat.completions.create(
        model=server.lora_id, messages=say("stone"), max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "word", "schema": SCHEMA}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), SCHEMA)


def test_each_adapter_answers_for_itself_over_one_shared_base(client, server):
    def answer(model: str) -> str:
        reply = client.chat.completions.create(model=model, messages=say("cloud"), max_tokens=8)
        return reply.choices[0].message.content

    tuned, zeroed, base = answer(server.lora_id), answer("other"), answer("base")
    assert zeroed == base  # lora_B = 0: the base model's answer
    assert tuned != base  # the trained adapter changed it
    assert answer(server.lora_id) == tuned  # switching back and forth keeps each adapter's own answer


def test_runs_named_anything_share_a_base_without_clashing_with_peft(tiny_lora_run, tmp_path):
    """Model ids are directory names: a dot (not allowed in a PEFT adapter name) or `lo` (inside PEFT's own
    `lora_` prefix) must not reach PEFT as the adapter's name."""
    from tuneforge.generate import GenerationSettings
    from tuneforge.serve import load_engines

    names = ("lo", "meetings.v2")
    engines = load_engines([tiny_lora_run, *(zeroed_adapter_copy(tiny_lora_run, tmp_path / name) for name in names)])
    settings = GenerationSettings(max_new_tokens=6, temperature=0.0, batch_size=1)

    def answer(model: str) -> str:
        served = engines.causal[model]
        return served.complete([say("cloud")], settings, seed=None, constraint=None)[0].text

    base = answer("base")
    assert [answer(name) for name in names] == [base, base]  # each zeroed adapter answers as the base
    assert answer(tiny_lora_run.name) != base


def test_a_stop_string_ends_the_answer_before_it(client, server):
    free = client.chat.completions.create(model="base", messages=say("apple"), max_tokens=12).choices[0]
    stop = free.message.content[2:4]
    cut = client.chat.completions.create(model="base", messages=say("apple"), max_tokens=12, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.message.content
    assert free.message.content.startswith(cut.message.content)


@pytest.mark.parametrize(("request_body", "error", "fragment"), [
    ({"messages": [{"role": "robot", "content": "hi"}]}, "BadRequestError", "unknown role 'robot'"),
    ({"max_tokens": 65}, "BadRequestError", "over this server's limit of 64"),
    ({"model": "nope"}, "NotFoundError", "no generation model 'nope'"),
    ({"model": "tickets"}, "BadRequestError", "is a classifier"),
    ({"model": "places"}, "BadRequestError", "'places' is a tagger: send its texts to /v1/tag"),
    ({"messages": []}, "BadRequestError", "messages"),
    ({"n": 3}, "BadRequestError", "one choice per request"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     "BadRequestError", "not a valid JSON Schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "answer_schema"}}},
     "BadRequestError", "has no answer schema"),  # its targets are words, not JSON objects
])
def test_bad_requests_get_openai_errors(client, server, request_body, error, fragment):
    body = {"model": server.lora_id, "messages": say("apple"), "max_tokens": 4, **request_body}
    with pytest.raises(getattr(openai, error)) as caught:
        client.chat.completions.create(**body)
    assert fragment in caught.value.body["message"]


def test_malformed_or_oversized_bodies_are_4xx_json_errors(server):
    bad_json = http("POST", f"{server.url}/v1/chat/completions", content=b'{"model": ')
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
    huge = http("POST", f"{server.url}/v1/completions", json_body={"model": "base", "prompt": "x" * 30_000})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    long_prompt = http("POST", f"{server.url}/v1/completions", json_body={"model": "base", "prompt": "word " * 3000})
    assert long_prompt.status_code == 400 and long_prompt.json()["error"]["code"] == "context_length_exceeded"
    missing = http("GET", f"{server.url}/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def test_classify_gives_a_label_and_a_probability_per_class(server):
    reply = http("POST", f"{server.url}/v1/classify",
                 json_body={"model": "tickets", "input": ["refund me", "love it"]}).json()
    assert [row["index"] for row in reply["data"]] == [0, 1]
    for row in reply["data"]:
        assert set(row["probabilities"]) == {"billing", "bug", "praise"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    forced = http("POST", f"{server.url}/v1/classify",
                  json_body={"model": "tickets", "input": "refund me", "threshold": 1.0, "fallback": "bug"}).json()
    assert forced["data"][0]["label"] == "bug" and "below_threshold" in forced["data"][0]
    wrong = http("POST", f"{server.url}/v1/classify", json_body={"model": "tickets", "input": "x", "fallback": "spam"})
    assert wrong.status_code == 400 and "not one of the labels" in wrong.json()["error"]["message"]


def tag(server, **body):
    return http("POST", f"{server.url}/v1/tag", json_body={"model": "places", **body})


@pytest.mark.parametrize("aggregation", ["first", "average", "max"])
def test_tag_gives_the_spans_the_tagger_finds_one_entry_per_text(server, aggregation):
    tagger = server.engines.taggers["places"].predictor
    texts = ["Meet Aiko in Oslo on June 2.", LONG_TEXT]
    assert len(tagger.tokenizer(LONG_TEXT)["input_ids"]) > TAGGER_CONTEXT  # tagged in windows
    reply = tag(server, input=texts, aggregation=aggregation)
    assert reply.status_code == 200
    data = reply.json()["data"]
    assert [row["index"] for row in data] == [0, 1]
    assert [row["entities"] for row in data] == [[entity.to_dict() for entity in found]
                                                 for found in tagger.predict(texts, aggregation)]
    assert data[1]["entities"]  # the untrained head still tags something: the comparison is not of empty lists
    assert all(text[e["start"]:e["end"]] == e["text"] for text, row in zip(texts, data, strict=True)
               for e in row["entities"])


def test_tag_takes_one_text_and_tags_with_first_subwords_by_default(server):
    reply = tag(server, input=LONG_TEXT).json()
    assert reply["object"] == "list" and reply["model"] == "places"
    expected = server.engines.taggers["places"].predictor.predict([LONG_TEXT], "first")[0]
    assert reply["data"] == [{"index": 0, "entities": [entity.to_dict() for entity in expected]}]


@pytest.mark.parametrize(("path", "body", "status", "fragment"), [
    ("/v1/tag", {"aggregation": "mean"}, 400, "unknown aggregation 'mean'; use one of first, average, max"),
    ("/v1/tag", {"model": "tickets"}, 400, "'tickets' is a classifier: send its texts to /v1/classify"),
    ("/v1/tag", {"model": "base"}, 400, "'base' is a chat model: send it to /v1/chat/completions"),
    ("/v1/tag", {"model": "nope"}, 404, "no tagging model 'nope' is served here (served: places)"),
    ("/v1/tag", {"input": ["x"] * 257}, 400, "input holds 257 texts; send 1 to 256"),
    ("/v1/tag", {"threshold": 0.5}, 400, "threshold: Extra inputs are not permitted"),
    ("/v1/classify", {"model": "places"}, 400, "'places' is a tagger: send its texts to /v1/tag"),
])
def test_bad_tag_requests_get_one_line_errors(server, path, body, status, fragment):
    reply = http("POST", f"{server.url}{path}", json_body={"model": "places", "input": "Oslo", **body})
    message = reply.json()["error"]["message"]
    assert reply.status_code == status and fragment in message and "\n" not in message


def test_no_ui_leaves_the_page_out_and_its_files_behind_the_key():
    from tuneforge.serve import build_app
    from tuneforge.serve.engines import Engines

    with LoopbackServer(build_app(Engines(), ui=False)) as running:
        assert http("GET", f"{running.url}/").status_code == 404
    with LoopbackServer(build_app(Engines(), api_key="s3cret", ui=False)) as running:
        assert http("GET", f"{running.url}/ui/app.js").status_code == 401  # open only while the page is served
    with LoopbackServer(build_app(Engines(), api_key="s3cret")) as running:
        page = http("GET", f"{running.url}/")
        assert page.status_code == 200 and b'name="tuneforge-api-key" content="required"' in page.body


def test_the_request_printed_at_start_fits_the_served_models_kind(wide_terminal):
    from tuneforge.ui.console import console, show_serving

    def printed(kinds: dict[str, str]) -> str:
        with console.capture() as captured:
            show_serving("http://127.0.0.1:8000", kinds, api_key=False, exposed=False)
        return captured.get()

    assert "/v1/chat/completions" in printed({"tickets": "classify", "demo": "chat"})
    assert '"model": "demo"' in printed({"tickets": "classify", "demo": "chat"})
    tagger = printed({"places": "tag"})
    assert "/v1/tag" in tagger and '"input": ["Hello"]' in tagger and "playground: http://127.0.0.1:8000/" in tagger
    assert "/v1/classify" in printed({"tickets": "classify"})


def test_an_api_key_is_required_when_set(tiny_lora_run):
    from tuneforge.serve import build_app
    from tuneforge.serve.engines import Engines

    with LoopbackServer(build_app(Engines(), api_key="s3cret")) as running:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{running.url}/v1", api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=f"{running.url}/v1", api_key="s3cret").models.list().data == []
        assert http("GET", f"{running.url}/health").status_code == 200  # probes need no key
        # without the key nothing else is told: not which paths exist, not what is wrong with the body
        for method, path, content in (("GET", "/v1/nowhere", None), ("POST", "/v1/chat/completions", b"{not json"),
                                      ("POST", "/v1/classify", b"[]"), ("POST", "/v1/tag", b"[]")):
            refused = http(method, f"{running.url}{path}", content=content)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", path


def test_concurrent_requests_are_all_answered_once(client, server):
    def ask(index: int) -> tuple[int, str]:
        reply = client.completions.create(model="base", prompt=f"Say {index}.", max_tokens=2, seed=index)
        return index, reply.id

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(200)))
    assert sorted(i for i, _ in answers) == list(range(200))
    assert len({ident for _, ident in answers}) == 200


def test_requests_batched_together_get_the_answers_they_get_alone(server):
    from tuneforge.generate import GenerationSettings
    from tuneforge.serve.engines import Job

    engines = server.engines
    tuned, base = engines.causal[server.lora_id], engines.causal["base"]
    settings = GenerationSettings(max_new_tokens=6)
    jobs = [Job(served, say(word), settings) for served in (tuned, base) for word in ("apple", "a", "stone river")]
    alone = [engines.complete_many([job])[0].text for job in jobs]
    assert engines.complete_many(jobs) == [engines.complete_many([job])[0] for job in jobs]
    assert [c.text for c in engines.complete_many(jobs)] == alone
    assert alone[0] != alone[3]  # the adapter's answer and the base's stay apart inside one call


@pytest.mark.slow
def test_ray_serve_deployment_answers_the_openai_client(tiny_lora_run):
    from tuneforge.serve import ServeOptions, start, stop

    served = start([tiny_lora_run], ServeOptions(port=free_port(), cpus_per_replica=1))
    try:
        assert served.model_ids == [tiny_lora_run.name, "base"]
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list().data} == set(served.model_ids)
        page = http("GET", f"{served.url}/")  # the playground, through Ray Serve's proxy and the gateway
        assert page.status_code == 200 and b"tuneforge playground" in page.body
        assert "default-src 'none'" in page.headers["content-security-policy"]
        answer = client.chat.completions.create(model=tiny_lora_run.name, messages=say("apple"), max_tokens=6)
        assert answer.choices[0].message.content
        streamed = client.chat.completions.create(model="base", messages=say("apple"), max_tokens=6, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # batched by serve.batch on the replica
            replies = list(pool.map(lambda i: client.completions.create(model="base", prompt=f"Say {i}.",
                                                                        max_tokens=3), range(16)))
        assert len({reply.id for reply in replies}) == 16 and all(r.usage.completion_tokens for r in replies)
        generated = answer.usage.completion_tokens + sum(r.usage.completion_tokens for r in replies)
        wanted = (f'model="{tiny_lora_run.name}"', 'model="base"', 'route="/v1/completions",status="200"',
                  "tuneforge_serve_request_seconds_bucket", "ray_serve_num_http_requests")
        # Each process exports on its own clock: wait until every series the asserts read has arrived.
        exported = prometheus_series(lambda text: all(series in text for series in wanted) and counter_total(
            text, "tuneforge_serve_generated_tokens") >= generated, timeout=120)
        assert f'model="{tiny_lora_run.name}"' in exported and 'model="base"' in exported
        assert 'tuneforge_serve_request_seconds_bucket' in exported and "ray_serve_num_http_requests" in exported
        assert generated <= counter_total(exported, "tuneforge_serve_generated_tokens")
    finally:
        stop()


@pytest.mark.slow
def test_a_replica_that_dies_mid_request_is_a_503_and_comes_back(tiny_lora_run):
    import os
    import signal

    import psutil

    from tuneforge.serve import ServeOptions, start, stop

    served = start([tiny_lora_run], ServeOptions(port=free_port(), cpus_per_replica=1, max_batch_size=1))
    try:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        replica = next(p for p in psutil.process_iter(["cmdline"])
                       if "ServeReplica:tuneforge:models" in " ".join(p.info["cmdline"] or []))

        def ask(_index: int) -> int:
            try:
                return client.completions.create(model="base", prompt="Say apple.", max_tokens=400).usage.total_tokens
            except openai.InternalServerError as exc:
                assert exc.body["code"] == "replica_unavailable", exc.body
                return exc.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # answered one after another (no batching)
            pending = [pool.submit(ask, index) for index in range(8)]
            time.sleep(2)
            assert not all(future.done() for future in pending)  # requests in flight when the replica dies
            os.kill(replica.pid, signal.SIGKILL)  # what the kernel's OOM killer or a native crash does
            outcomes = [future.result() for future in pending]
        # The requests in flight are sent again for a few seconds (no other replica here), then answered 503 with
        # the reason: never a 500 or a dropped connection.
        assert all(outcome == 503 or outcome > 0 for outcome in outcomes)
        deadline = time.time() + 180
        while True:  # Ray Serve starts a new replica; until it is up, requests get the same 503, never a 500
            try:
                answer = client.completions.create(model="base", prompt="Say apple.", max_tokens=3)
                break
            except openai.InternalServerError as exc:
                assert exc.status_code == 503 and time.time() < deadline
                time.sleep(1)
        assert answer.usage.completion_tokens > 0
    finally:
        stop()


@pytest.mark.slow
def test_with_two_replicas_a_replica_killed_mid_request_loses_no_request(tiny_lora_run):
    import os
    import signal

    import psutil

    from tuneforge.serve import ServeOptions, start, stop

    served = start([tiny_lora_run], ServeOptions(port=free_port(), replicas=2, cpus_per_replica=1, max_batch_size=1))
    try:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        replicas = [p for p in psutil.process_iter(["cmdline"])
                    if "ServeReplica:tuneforge:models" in " ".join(p.info["cmdline"] or [])]
        assert len(replicas) == 2
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(lambda: client.completions.create(model="base", prompt="Say apple.",
                                                                     max_tokens=200)) for _ in range(8)]
            time.sleep(2)
            assert not all(future.done() for future in pending)
            os.kill(replicas[0].pid, signal.SIGKILL)
            answers = [future.result() for future in pending]  # an error here is a request lost
        assert all(answer.usage.completion_tokens > 0 for answer in answers)
    finally:
        stop()


def prometheus_series(ready, timeout: float = 60.0) -> str:
    """The local node's Prometheus metrics page once `ready(text)` (Ray reports metrics every few seconds)."""
    import ray

    node = ray.nodes()[0]
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    deadline = time.time() + timeout
    while True:
        text = http("GET", url).body.decode()
        if ready(text) or time.time() > deadline:
            return text
        time.sleep(2)


def counter_total(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"ray_{name}_total{{") or line.startswith(f"ray_{name}{{"))


def test_a_stream_closed_early_stops_its_generation(server):
    from tuneforge.generate import GenerationSettings

    served = server.engines.causal["base"]
    outcome: list = []
    pieces = server.engines.stream(served, say("apple"), GenerationSettings(max_new_tokens=200), seed=None,
                                   constraint=None, outcome=outcome)
    next(pieces)
    pieces.close()  # what a client that leaves mid-stream causes
    assert not server.engines.lock.locked()  # the next request is not blocked
    assert outcome and outcome[0].new_tokens < 200  # generation ended early, not in the background
