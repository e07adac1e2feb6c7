"""Requests in the shapes OpenAI's API accepts and its clients send, through the official `openai` client where it
can send them and raw HTTP where it cannot: each is either done as OpenAI does it or refused with a 400 that names
the parameter — never a 200 that silently ignores what was asked.

The checks sit in the API layer, so they hold for both engines (torch here; GGUF models go through the same app).
"""

from __future__ import annotations

import pytest

from tests.helpers import LoopbackServer, http

openai = pytest.importorskip("openai")

SAY = [{"role": "user", "content": "Say apple."}]


@pytest.fixture(scope="module")
def served(tiny_lora_run):
    from tuneforge.serve import build_app, load_engines

    with LoopbackServer(build_app(load_engines([tiny_lora_run]))) as running:
        running.model = tiny_lora_run.name
        running.client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        yield running


def answer(served, messages, **extra) -> str:
    reply = served.client.chat.completions.create(model=served.model, messages=messages, max_tokens=6, **extra)
    return reply.choices[0].message.content


def refused(call, param: str) -> str:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    assert caught.value.param == param, caught.value.message
    return caught.value.message


def test_content_as_a_list_of_text_parts_is_the_same_as_a_string(served):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say apple."}]}]
    assert answer(served, parts) == answer(served, SAY)
    split = [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "apple."}]}]
    assert answer(served, split) == answer(served, [{"role": "user", "content": "Say\napple."}])


def test_the_developer_role_is_the_system_role(served):
    system = "Answer with one word."
    assert answer(served, [{"role": "developer", "content": system}, *SAY]) == \
        answer(served, [{"role": "system", "content": system}, *SAY])


def test_an_assistant_message_with_null_content_is_taken(served):
    history = [*SAY, {"role": "assistant", "content": None}, {"role": "user", "content": "Say pear."}]
    assert answer(served, history) == answer(served, [*SAY, {"role": "assistant", "content": ""},
                                                      {"role": "user", "content": "Say pear."}])


def test_what_a_text_model_cannot_read_is_refused_naming_the_message(served):
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    assert "read text only" in refused(lambda: answer(served, image), "messages[0].content")
    user_null = [{"role": "user", "content": None}]
    assert "assistant messages only" in refused(lambda: answer(served, user_null), "messages[0].content")
    tool_result = [*SAY, {"role": "tool", "content": "42", "tool_call_id": "call_1"}]
    assert "not trained to call tools" in refused(lambda: answer(served, tool_result), "messages[1]")
    assert "unknown role 'robot'" in refused(lambda: answer(served, [{"role": "robot", "content": "x"}]), "messages")


def test_tools_are_refused_unless_the_request_says_not_to_call_them(served):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    message = refused(lambda: answer(served, SAY, tools=tools), "tools")
    assert "response_format json_schema" in message and 'tool_choice: "none"' in message
    assert answer(served, SAY, tools=tools, tool_choice="none") == answer(served, SAY)


@pytest.mark.parametrize(("field", "value"), [("logprobs", True), ("top_logprobs", 2), ("presence_penalty", 0.5),
                                              ("frequency_penalty", -0.3), ("logit_bias", {"50": 5})])
def test_sampling_options_not_done_are_refused_by_name(served, field, value):
    assert field in refused(lambda: answer(served, SAY, **{field: value}), field)


@pytest.mark.parametrize(("field", "off"), [("logprobs", False), ("presence_penalty", 0), ("frequency_penalty", 0.0),
                                            ("logit_bias", {})])
def test_the_same_options_at_their_off_value_are_taken(served, field, off):
    assert answer(served, SAY, **{field: off}) == answer(served, SAY)


def test_completions_take_a_list_of_one_prompt_and_refuse_what_they_cannot_do(served):
    def complete(**body):
        return served.client.completions.create(model=served.model, max_tokens=4, **body).choices[0].text

    assert complete(prompt=["Say apple."]) == complete(prompt="Say apple.")
    assert "2 prompts" in refused(lambda: complete(prompt=["Say apple.", "Say pear."]), "prompt")
    assert "token-id prompts" in refused(lambda: complete(prompt=[101, 102]), "prompt")
    for field, value in (("echo", True), ("best_of", 2), ("suffix", "!"), ("logprobs", 1)):
        assert field in refused(lambda field=field, value=value: complete(prompt="Say apple.", **{field: value}), field)
    assert complete(prompt="Say apple.", best_of=1, echo=False) == complete(prompt="Say apple.")


def test_one_model_can_be_retrieved_by_id(served):
    model = served.client.models.retrieve(served.model)
    assert model.id == served.model and model.object == "model" and model.model_extra["tuneforge"]["kind"] == "chat"
    with pytest.raises(openai.NotFoundError):
        served.client.models.retrieve("nope")
    missing = http("GET", f"{served.url}/v1/models/nope")
    assert missing.status_code == 404 and "served: " in missing.json()["error"]["message"]
