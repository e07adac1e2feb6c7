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

    # fp32 answers throughout (no bf16-packed copy on CPUs with native bf16): logprobs are compared with the model's
    # own fp32 log-softmax
    engines = load_engines([tiny_lora_run])
    engines.causal[tiny_lora_run.name].generator.pack_bf16 = False  # read when the folded copy is made, at first use
    with LoopbackServer(build_app(engines)) as running:
        running.model, running.engines = tiny_lora_run.name, engines
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


@pytest.mark.parametrize(("field", "value"), [("presence_penalty", 0.5), ("frequency_penalty", -0.3),
                                              ("logit_bias", {"50": 5}), ("modalities", ["text", "audio"]),
                                              ("audio", {"voice": "alloy", "format": "wav"}),
                                              ("prediction", {"type": "content", "content": "apple"}),
                                              ("web_search_options", {}), ("reasoning_effort", "low")])
def test_sampling_options_not_done_are_refused_by_name(served, field, value):
    assert field in refused(lambda: answer(served, SAY, **{field: value}), field)


@pytest.mark.parametrize(("field", "off"), [("logprobs", False), ("presence_penalty", 0), ("frequency_penalty", 0.0),
                                            ("logit_bias", {}), ("modalities", ["text"]), ("user", "someone"),
                                            ("metadata", {"team": "a"}), ("store", False),
                                            ("service_tier", "auto"), ("parallel_tool_calls", False)])
def test_the_same_options_at_their_off_value_are_taken(served, field, off):
    assert answer(served, SAY, **{field: off}) == answer(served, SAY)


def test_completions_take_lists_of_prompts_and_token_ids_and_refuse_what_they_cannot_do(served):
    def complete(**body):
        return served.client.completions.create(model=served.model, **{"max_tokens": 4, **body})

    one = complete(prompt="Say apple.").choices[0].text
    assert complete(prompt=["Say apple."]).choices[0].text == one
    both = complete(prompt=["Say apple.", "Say pear."])
    assert [c.index for c in both.choices] == [0, 1] and both.choices[0].text == one
    assert both.choices[1].text == complete(prompt="Say pear.").choices[0].text
    ids = served.engines.causal[served.model].tokenize("Say apple.", special=False)
    assert complete(prompt=ids).choices[0].text == one and complete(prompt=[ids]).choices[0].text == one
    for field, value in (("best_of", 2), ("suffix", "!")):
        assert field in refused(lambda field=field, value=value: complete(prompt="Say apple.", **{field: value}), field)
    assert "echo: true" in refused(lambda: complete(prompt="Say apple.", max_tokens=0), "max_tokens")
    assert complete(prompt="Say apple.", best_of=1, echo=False).choices[0].text == one


def test_completions_continue_the_text_as_it_is_not_as_a_chat_turn(served):
    """OpenAI's /v1/completions continues the prompt; a chat run's template is for /v1/chat/completions."""
    generator = served.engines.causal[served.model].generator
    from tuneforge.generate import Continuation, GenerationSettings

    expected = generator.complete([Continuation("The sky is")], GenerationSettings(max_new_tokens=5))[0].text
    reply = served.client.completions.create(model=served.model, prompt="The sky is", max_tokens=5)
    assert reply.choices[0].text.strip() == expected
    templated = generator.complete(["The sky is"], GenerationSettings(max_new_tokens=5))[0].text
    assert generator.render("The sky is") != "The sky is" and templated  # the chat form differs from the text


def test_one_model_can_be_retrieved_by_id(served):
    model = served.client.models.retrieve(served.model)
    assert model.id == served.model and model.object == "model" and model.model_extra["tuneforge"]["kind"] == "chat"
    with pytest.raises(openai.NotFoundError):
        served.client.models.retrieve("nope")
    missing = http("GET", f"{served.url}/v1/models/nope")
    assert missing.status_code == 404 and "served: " in missing.json()["error"]["message"]


# -- logprobs -------------------------------------------------------------------------------------------------

def own_logprobs(served, ids: list[int]):
    """The model's own fp32 log-softmax after each position (the unmerged PEFT model, not the serving path)."""
    import torch

    model = served.engines.causal[served.model].generator.model
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def test_chat_logprobs_are_the_models_own_log_softmax_at_each_answer_token(served):
    from tuneforge.generate import GenerationSettings

    reply = served.client.chat.completions.create(model=served.model, messages=SAY, max_tokens=6, logprobs=True,
                                                   top_logprobs=3)
    content = reply.choices[0].logprobs.content
    torch_model = served.engines.causal[served.model]
    prompt = torch_model.prompt_ids([{"role": "system", "content": torch_model.system_prompt}, *SAY]
                                    if torch_model.system_prompt else SAY)
    generated = torch_model.generator.complete([SAY if not torch_model.system_prompt else
                                                [{"role": "system", "content": torch_model.system_prompt}, *SAY]],
                                               GenerationSettings(max_new_tokens=6))[0]
    assert len(content) == len(generated.token_ids) > 0
    reference = own_logprobs(served, prompt + generated.token_ids)
    tokenizer = torch_model.generator.tokenizer
    for offset, (entry, token) in enumerate(zip(content, generated.token_ids, strict=True)):
        row = reference[len(prompt) - 1 + offset]
        assert entry.token == tokenizer.decode([token]) and bytes(entry.bytes) == entry.token.encode()
        assert entry.logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert len(entry.top_logprobs) == 3
        best = row.topk(3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)  # greedy: the likeliest
    assert "".join(entry.token for entry in content).strip() == reply.choices[0].message.content


def test_completions_echo_scores_every_prompt_token_as_lm_eval_reads_them(served):
    """lm-eval's loglikelihood request: token ids, echo, logprobs 1, max_tokens 1 (or 0), temperature 0."""
    ids = served.engines.causal[served.model].tokenize("The river runs to the sea", special=False)
    reference = own_logprobs(served, ids)
    for max_tokens in (0, 1):
        choice = served.client.completions.create(model=served.model, prompt=ids, max_tokens=max_tokens, echo=True,
                                                  logprobs=1, temperature=0).choices[0]
        logprobs = choice.logprobs
        assert len(logprobs.tokens) == len(ids) + max_tokens and logprobs.token_logprobs[0] is None
        assert logprobs.top_logprobs[0] is None and logprobs.text_offset[0] == 0
        expected = [float(reference[i - 1, ids[i]]) for i in range(1, len(ids))]
        assert logprobs.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=1e-4)
        for position in range(1, len(ids)):
            assert list(logprobs.top_logprobs[position].values()) == \
                pytest.approx([float(reference[position - 1].max())], abs=1e-4)
        assert choice.text.startswith("The river runs to the sea")
    scored = served.client.completions.create(model=served.model, prompt="The river", max_tokens=3, logprobs=0)
    assert len(scored.choices[0].logprobs.tokens) >= 1
    assert scored.choices[0].logprobs.text_offset[0] == len("The river")  # offsets count from the prompt's end


def test_logprob_requests_clients_get_wrong_are_refused_by_name(served):
    assert "needs logprobs: true" in refused(lambda: answer(served, SAY, top_logprobs=2), "top_logprobs")
    assert "not streamed" in refused(lambda: list(served.client.chat.completions.create(
        model=served.model, messages=SAY, max_tokens=2, logprobs=True, stream=True)), "logprobs")
    refused(lambda: answer(served, SAY, logprobs=True, top_logprobs=21), "top_logprobs")
    raw = http("POST", f"{served.url}/v1/completions",
               json_body={"model": served.model, "prompt": "x", "max_tokens": 1, "top_logprobs": 2})
    assert raw.status_code == 400 and "in logprobs" in raw.json()["error"]["message"]


def test_the_tokenizer_endpoints_are_the_ones_lm_eval_detects(served):
    info = http("GET", f"{served.url}/tokenizer_info").json()
    tokenizer = served.engines.causal[served.model].generator.tokenizer
    assert info["eos_token"] == tokenizer.eos_token and info["model_max_length"] > 0
    tokens = http("POST", f"{served.url}/tokenize", json_body={"prompt": "Say apple.", "add_special_tokens": False})
    assert tokens.json()["tokens"] == tokenizer("Say apple.", add_special_tokens=False)["input_ids"]
    back = http("POST", f"{served.url}/detokenize", json_body={"tokens": tokens.json()["tokens"]})
    assert back.json()["prompt"] == "Say apple."
    chat = http("POST", f"{served.url}/tokenize", json_body={"model": served.model, "messages": SAY}).json()
    assert chat["tokens"] == served.engines.causal[served.model].prompt_ids(SAY)
    lm_eval_utils = pytest.importorskip("lm_eval.utils")
    assert lm_eval_utils.check_remote_tokenizer_support(f"{served.url}/v1/completions")
