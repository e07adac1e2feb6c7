"""Serving GGUF files through llama.cpp: the tiny run exported as GGUF (and as base + GGUF LoRA adapter), behind the
same OpenAI-shaped API, called with the official `openai` client."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.helpers import LoopbackServer, http

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")

SETTINGS = dict(prompts=2, max_new_tokens=4)


def say(word: str) -> list[dict]:
    return [{"role": "user", "content": f"Say {word}."}]


@pytest.fixture(scope="module")
def gguf_files(tiny_lora_run):
    """The run as one GGUF model, and as an unchanged base GGUF plus a GGUF LoRA adapter."""
    from tuneforge.export import ExportSettings, export_model

    export = tiny_lora_run / "export"
    if not (export / "model-f16.gguf").exists():
        export_model(tiny_lora_run, "gguf", ExportSettings(quant="f16", **SETTINGS))
    if not (export / "base-f16.gguf").exists():
        export_model(tiny_lora_run, "gguf-lora", ExportSettings(quant="f16", with_base=True, **SETTINGS))
    return export / "model-f16.gguf", export / "base-f16.gguf", export / "adapter-f16.gguf"


@pytest.fixture(scope="module")
def server(gguf_files):
    from tuneforge.serve import Limits, build_app, load_engines

    model, _, _ = gguf_files
    engines = load_engines([model], threads=1)
    with LoopbackServer(build_app(engines, limits=Limits(max_tokens=64))) as running:
        running.engines, running.model_id = engines, next(iter(engines.causal))
        yield running
    engines.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_a_gguf_from_a_run_is_served_under_the_runs_name(client, server, tiny_lora_run):
    assert server.model_id == f"{tiny_lora_run.name}-gguf"
    assert [m.id for m in client.models.list().data] == [server.model_id]


def test_gguf_chat_answers_like_the_torch_model_and_streams_the_same_text(client, server, tiny_lora_run):
    from tuneforge.generate import GenerationSettings, Generator

    answer = client.chat.completions.create(model=server.model_id, messages=say("apple"), max_tokens=5)
    text = answer.choices[0].message.content
    torch_answer = Generator.from_path(tiny_lora_run).complete(["Say apple."], GenerationSettings(max_new_tokens=5))
    assert text.strip() == torch_answer[0].text  # greedy through the same chat template
    assert answer.usage.completion_tokens == torch_answer[0].new_tokens
    assert answer.choices[0].finish_reason == torch_answer[0].finish_reason
    assert answer.usage.prompt_tokens == server.engines.causal[server.model_id].prompt_tokens(say("apple"))
    chunks = list(client.chat.completions.create(model=server.model_id, messages=say("apple"), max_tokens=5,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason


def test_gguf_json_schema_answers_through_llama_cpps_grammar(client, server):
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green"]}}, "required": ["colour"],
              "additionalProperties": False}
    answer = client.chat.completions.create(
        model=server.model_id, messages=say("apple"), max_tokens=24,
        response_format={"type": "json_schema", "json_schema": {"name": "colour", "schema": schema}})
    assert json.loads(answer.choices[0].message.content)["colour"] in ("red", "green")


def test_gguf_stop_strings_and_limits(client, server):
    free = client.chat.completions.create(model=server.model_id, messages=say("apple"), max_tokens=8).choices[0]
    stop = free.message.content.strip()[1:3]
    cut = client.chat.completions.create(model=server.model_id, messages=say("apple"), max_tokens=8,
                                         stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.message.content
    too_long = http("POST", f"{server.url}/v1/completions",
                    json_body={"model": server.model_id, "prompt": "word " * 5000, "max_tokens": 4})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"


def test_a_stream_left_early_does_not_leak_into_the_next_answer(client, server):
    whole = client.chat.completions.create(model=server.model_id, messages=say("river"), max_tokens=6)
    served = server.engines.causal[server.model_id]
    from tuneforge.generate import GenerationSettings

    pieces = server.engines.stream(served, say("stone"), GenerationSettings(max_new_tokens=60), seed=None,
                                   constraint=None, outcome=[])
    next(pieces)
    pieces.close()  # the child stops generating; what it already sent is dropped
    again = client.chat.completions.create(model=server.model_id, messages=say("river"), max_tokens=6)
    assert again.choices[0].message.content == whole.choices[0].message.content


def test_concurrent_gguf_requests_each_get_their_own_answer(client, server):
    import concurrent.futures

    words = ["apple", "river", "stone", "cloud"] * 3

    def ask(word: str) -> str:
        reply = client.chat.completions.create(model=server.model_id, messages=say(word), max_tokens=4)
        return reply.choices[0].message.content

    alone = {word: ask(word) for word in set(words)}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # prompt counting and generation share one pipe
        assert list(pool.map(ask, words)) == [alone[word] for word in words]


def test_a_crash_in_llama_cpp_is_a_503_and_the_next_request_is_answered(client, server):
    served = server.engines.causal[server.model_id]
    os.kill(served.worker().process.pid, signal.SIGKILL)  # what a segfault in native code looks like from here
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=server.model_id, messages=say("apple"), max_tokens=4)
    assert caught.value.status_code == 503 and "crashed" in caught.value.body["message"]
    assert client.chat.completions.create(model=server.model_id, messages=say("apple"),
                                          max_tokens=4).choices[0].message.content


def test_a_gguf_lora_adapter_is_served_over_its_base(gguf_files, tiny_lora_run):
    from tuneforge.serve import build_app, load_engines

    model, base, adapter = gguf_files
    engines = load_engines([base], gguf_lora=adapter, threads=1)
    merged = load_engines([model], threads=1)
    try:
        with LoopbackServer(build_app(engines)) as running:
            client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
            assert [m.id for m in client.models.list().data] == [f"{tiny_lora_run.name}-gguf"]
            with_adapter = client.chat.completions.create(model=f"{tiny_lora_run.name}-gguf", messages=say("cloud"),
                                                          max_tokens=6).choices[0].message.content
        with LoopbackServer(build_app(merged)) as running:
            client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
            from_merged = client.chat.completions.create(model=f"{tiny_lora_run.name}-gguf", messages=say("cloud"),
                                                         max_tokens=6).choices[0].message.content
    finally:
        engines.close()
        merged.close()
    assert with_adapter == from_merged  # base + adapter at run time answers like the merged export


def test_lora_without_exactly_one_gguf_is_refused(gguf_files, tiny_lora_run):
    from tuneforge.errors import ConfigError
    from tuneforge.serve.engines import planned_models

    _, base, adapter = gguf_files
    with pytest.raises(ConfigError, match="name exactly one .gguf"):
        planned_models([tiny_lora_run], gguf_lora=adapter)
    with pytest.raises(ConfigError, match="no such GGUF file"):
        planned_models([base], gguf_lora=base.parent / "missing.gguf")


def llama_cpps_own_logprobs(model_path, ids: list[int]):
    """llama.cpp's own log-softmax at every position, from a model opened the documented way for it (logits_all)."""
    import numpy as np

    from tuneforge.export.parity import open_gguf

    llm = open_gguf(model_path, logits_all=True, n_ctx=256, n_threads=1)
    llm.eval(ids)
    scores = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    return scores - np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        scores.max(-1, keepdims=True)


def test_gguf_echo_logprobs_equal_llama_cpps_own_and_chat_logprobs_follow_the_answer(client, server, gguf_files):
    served = server.engines.causal[server.model_id]
    ids = served.tokenize("The river runs to the sea", special=False)
    reference = llama_cpps_own_logprobs(gguf_files[0], ids)
    choice = client.completions.create(model=server.model_id, prompt=ids, max_tokens=1, echo=True, logprobs=2,
                                       temperature=0).choices[0]
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and len(logprobs.tokens) == len(ids) + 1
    expected = [reference[i - 1, ids[i]] for i in range(1, len(ids))]
    assert logprobs.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=1e-4)
    assert max(logprobs.top_logprobs[1].values()) == pytest.approx(reference[0].max(), abs=1e-4)
    assert choice.text.startswith("The river runs to the sea")
    reply = client.chat.completions.create(model=server.model_id, messages=say("apple"), max_tokens=6, logprobs=True,
                                           top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert "".join(entry.token for entry in content) == reply.choices[0].message.content
    assert all(entry.top_logprobs[0].logprob >= entry.logprob - 1e-6 for entry in content)
    # the next request is answered as before: scoring left llama.cpp's cache consistent
    again = client.chat.completions.create(model=server.model_id, messages=say("apple"), max_tokens=6)
    assert again.choices[0].message.content == reply.choices[0].message.content
