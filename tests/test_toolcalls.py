"""Tool calls: which syntax a template uses, rendering tools and results with the publishers'
templates, and finding calls in streamed model output."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from chatcli.core.errors import TemplateError
from chatcli.core.events import ContentDelta, ToolCall
from chatcli.engine.output.parsing import Chain, PassThrough
from chatcli.engine.output.toolcalls import (
    ToolCallParser,
    family_for,
    supports_tools,
    template_messages,
)
from chatcli.engine.output.tools import normalize_tools
from chatcli.engine.template import CHATML_TEMPLATE, ChatTemplate

TEMPLATES = Path(__file__).parent / "templates"
QWEN3 = (TEMPLATES / "qwen3.jinja").read_text()
LLAMA31 = (TEMPLATES / "llama3.1.jinja").read_text()
MISTRAL = (TEMPLATES / "mistral-nemo.jinja").read_text()

# SmolLM2-Instruct's template: ChatML, no tools.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name.
    """
    return "22C"


TOOLS = normalize_tools([get_weather])
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "content": "22C", "tool_name": "get_weather"},
]


# -- which syntax -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "family"),
    [(QWEN3, "hermes"), (LLAMA31, "llama3"), (MISTRAL, "mistral"), (SMOLLM2, None),
     (CHATML_TEMPLATE, None), (None, None), ("", None),
     # markers alone do not make tool support: the template must render tools
     ("{{ '<tool_call>' }}{{ messages[0].content }}", None)],
)
def test_family_for(source, family):
    assert family_for(source) == family
    assert supports_tools(source) is (family is not None)


# -- rendering tools, calls and results ---------------------------------------------------------


def render(source: str, messages=HISTORY, **variables) -> str:
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>", model_name="m")
    return template.render(template_messages(messages), tools=TOOLS, **variables)


def test_qwen3_renders_tools_calls_and_results():
    prompt = render(QWEN3)
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert (
        '<tools>\n{"type": "function", "function": {"name": "get_weather", '
        '"description": "Get the current weather in a city.", "parameters": {"type": "object", '
        '"properties": {"city": {"type": "string", "description": "The city\'s name."}}, '
        '"required": ["city"]}}}\n</tools>'
    ) in prompt
    assert (
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n22C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    ) in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert render(QWEN3, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_llama31_renders_tools_calls_and_results():
    prompt = render(LLAMA31)
    assert prompt.startswith("<s><|start_header_id|>system<|end_header_id|>\n\n"
                             "Environment: ipython\n")
    # Tools go into the first user message, indented JSON, with the call format to use.
    assert 'Respond in the format {"name": function name, "parameters": ' in prompt
    assert '        "name": "get_weather",\n' in prompt
    assert "What's the weather in Paris?<|eot_id|>" in prompt
    assert (
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"22C"<|eot_id|>'
    ) in prompt
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_mistral_renders_tools_calls_and_results_with_matching_ids():
    prompt = render(MISTRAL)
    assert prompt.startswith(
        '<s>[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather", '
        '"description": "Get the current weather in a city.", "parameters": '
    )
    assert "[/AVAILABLE_TOOLS][INST]What's the weather in Paris?[/INST]" in prompt
    call_id = template_messages(HISTORY)[2]["tool_calls"][0]["id"]
    assert (
        f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {{"city": "Paris"}}, '
        f'"id": "{call_id}"}}]</s>'
        f'[TOOL_RESULTS]{{"content": 22C, "call_id": "{call_id}"}}[/TOOL_RESULTS]'
    ) in prompt


def test_templates_need_the_mapping():
    # Ollama-shaped messages as they are: Mistral wants ids, Llama chokes on empty tool_calls.
    with pytest.raises(TemplateError, match="Tool call IDs"):
        ChatTemplate(MISTRAL).render(HISTORY, tools=TOOLS)
    plain = [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello", "tool_calls": []},
             {"role": "user", "content": "bye"}]
    with pytest.raises(TemplateError, match="single tool-calls"):
        ChatTemplate(LLAMA31).render(plain, tools=TOOLS)
    assert "hello<|eot_id|>" in ChatTemplate(LLAMA31).render(
        template_messages(plain), tools=TOOLS
    )


def test_template_messages_mapping():
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome, and the time?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
            {"id": "call_77", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
        ]},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "19C", "tool_call_id": "call_77"},
        {"role": "tool", "content": "22C", "tool_name": "get_weather"},
        {"role": "assistant", "content": "Paris 22C, Rome 19C, 12:00.", "tool_calls": None},
    ]
    out = template_messages(messages)
    assert out == template_messages(messages)  # deterministic: the same prompt every turn
    assert messages[1]["content"] is None  # the input is not changed
    calls = out[1]["tool_calls"]
    assert out[1]["content"] == ""
    ids = [c["id"] for c in calls]
    assert all(len(i) == 9 and i.isalnum() for i in ids) and len(set(ids)) == 3
    assert calls[1] == {"type": "function", "id": ids[1],
                        "function": {"name": "get_time", "arguments": {"tz": "CET"}}}
    assert (out[2]["name"], out[2]["tool_call_id"]) == ("get_time", ids[1])
    assert out[3]["tool_call_id"] == ids[2]  # the caller's own id, mapped
    assert (out[4]["name"], out[4]["tool_call_id"]) == ("get_weather", ids[0])
    assert "tool_calls" not in out[5]
    kept = template_messages([{"role": "assistant", "content": "", "tool_calls": [
        {"id": "abcDEF123", "function": {"name": "f", "arguments": {}}}]}])
    assert kept[0]["tool_calls"][0]["id"] == "abcDEF123"


def test_renders_through_the_engine_with_a_tiny_gguf(tmp_path):
    from tiny_gguf import write_tiny_llama

    from chatcli.engine.decode import Engine

    path = write_tiny_llama(tmp_path / "q.gguf", chat_template=QWEN3)
    engine = Engine(path, options={"num_ctx": 256})
    try:
        assert family_for(engine.template.source) == "hermes"
        prompt = engine.render(template_messages(HISTORY), tools=TOOLS)
    finally:
        engine.close()
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\n22C\n</tool_response>" in prompt


# -- parsing streamed output --------------------------------------------------------------------


def pieces(text: str, how: str) -> list[str]:
    """``text`` cut as a tokenizer might: whole, char by char, or random 1-3 char pieces."""
    if how == "whole":
        return [text]
    if how == "chars":
        return list(text)
    rng, out, i = random.Random(how), [], 0
    while i < len(text):
        n = rng.randint(1, 3)
        out.append(text[i:i + n])
        i += n
    return out


SPLITS = ["whole", "chars", "seed1", "seed2", "seed3", "seed4"]


MARKERS = {"hermes": ("<tool_call>", "</tool_call>"), "llama3": ("<|python_tag|>",),
           "mistral": ("[TOOL_CALLS]",)}


def parse(family: str, text: str, how: str) -> tuple[str, list[ToolCall]]:
    parser = ToolCallParser(family)
    events = []
    for piece in pieces(text, how):
        events += parser.feed(piece)
    events += parser.finish()
    assert all(isinstance(e, (ContentDelta, ToolCall)) for e in events)
    content = [e.text for e in events if isinstance(e, ContentDelta)]
    for marker in MARKERS[family]:  # another family's markers are just text
        assert all(marker not in piece for piece in content)
    return "".join(content), [e for e in events if isinstance(e, ToolCall)]


NESTED = {"city": "Paris", "options": {"units": "celsius", "days": [1, 2], "hourly": False}}
TRICKY = {"query": 'set {x} to "naïve café" ☕ [ok] \\ end', "limit": 3}
TRICKY_JSON = '{"query": "set {x} to \\"naïve café\\" ☕ [ok] \\\\ end", "limit": 3}'

RECORDED = [
    # Qwen3 after its thinking: a sentence, two calls, nothing after.
    ("hermes",
     "I'll check the weather and your notes.\n<tool_call>\n"
     '{"name": "get_weather", "arguments": {"city": "Paris", "options": {"units": "celsius", '
     '"days": [1, 2], "hourly": false}}}\n</tool_call>\n<tool_call>\n'
     f'{{"name": "search_notes", "arguments": {TRICKY_JSON}}}\n</tool_call>',
     "I'll check the weather and your notes.",
     [("get_weather", NESTED), ("search_notes", TRICKY)]),
    # Text after a call is kept; arguments as JSON text are parsed.
    ("hermes",
     '<tool_call>\n{"name": "get_time", "arguments": "{\\"tz\\": \\"Europe/Paris\\"}"}\n'
     "</tool_call>\n\nI asked for the time in Paris.",
     "\n\nI asked for the time in Paris.",
     [("get_time", {"tz": "Europe/Paris"})]),
    # A complete call whose closing tag never came (stopped at end of generation).
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {}}\n',
     "", [("get_time", {})]),
    # Llama 3.1: the answer is the call.
    ("llama3",
     '{"name": "get_weather", "parameters": {"city": "Paris", "options": {"units": "celsius", '
     '"days": [1, 2], "hourly": false}}}',
     "", [("get_weather", NESTED)]),
    ("llama3", f'\n {{"name": "search_notes", "arguments": {TRICKY_JSON}}}\n',
     "", [("search_notes", TRICKY)]),
    ("llama3",
     '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Zürich"}}'
     '; {"name": "get_time", "parameters": {}}',
     "", [("get_weather", {"city": "Zürich"}), ("get_time", {})]),
    ("llama3", 'Let me look.<|python_tag|>{"name": "get_time", "parameters": {"tz": "UTC"}}',
     "Let me look.", [("get_time", {"tz": "UTC"})]),
    # Mistral Nemo: one list of calls.
    ("mistral",
     '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "options": '
     '{"units": "celsius", "days": [1, 2], "hourly": false}}, "id": "a1b2c3d4e"}, '
     f'{{"name": "search_notes", "arguments": {TRICKY_JSON}}}]',
     "", [("get_weather", NESTED), ("search_notes", TRICKY)]),
    # Newer Mistral models: name[ARGS]{...}, one marker per call, maybe a call id.
    ("mistral",
     'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
     f"[TOOL_CALLS]search_notes[CALL_ID]x9Y8z7W6v[ARGS]{TRICKY_JSON}",
     "Sure.", [("get_weather", {"city": "Paris"}), ("search_notes", TRICKY)]),
]


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize(("family", "output", "content", "calls"), RECORDED)
def test_recorded_outputs(family, output, content, calls, how):
    text, found = parse(family, output, how)
    assert text == content
    assert [(c.name, c.arguments) for c in found] == calls


# Not calls: everything comes back as content, exactly.
NOT_CALLS = [
    ("hermes", "Use the <tool> tag, or <tools>, or </tool> and <tool_c to mark things."),
    ("hermes", "The closing tag is </tool"),
    ("hermes", "Ends with a partial marker <tool_ca"),
    ("mistral", "[TOOL] and [TOOL_CALL] and [TOOLS] are not [TOOL_CALLS"),
    ("llama3", "<|python|> is not <|python_ta"),
    ("llama3", '{"name": "Ada Lovelace", "born": 1815}'),
    ("llama3", '{"answer": 42, "name": "x", "parameters": {}}'),
    ("llama3", '  [1, 2, 3] is a list'),
    ("llama3", 'The format is {"name": "f", "parameters": {}} as shown.'),
    ("llama3", "{not json at all}"),
]


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize(("family", "output"), NOT_CALLS)
def test_text_that_is_not_a_call_is_content(family, output, how):
    assert parse(family, output, how) == (output, [])


# Truncated or malformed calls: the text (without the marker) is content, nothing raises.
BROKEN = [
    ("hermes", 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa',
     'Checking.\n{"name": "get_weather", "arguments": {"city": "Pa'),
    ("hermes", "<tool_call>\n{name: get_weather}\n</tool_call> sorry",
     "\n{name: get_weather}\n sorry"),
    ("hermes", '<tool_call>{"arguments": {}}</tool_call>', '{"arguments": {}}'),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "argu', '[{"name": "get_weather", "argu'),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": [1]}]',
     '[{"name": "f", "arguments": [1]}]'),
    ("mistral", "[TOOL_CALLS]get_weather[AR", "get_weather[AR"),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": ', 'get_weather{"city": '),
    ("llama3", '{"name": "get_weather", "parameters": {"ci',
     '{"name": "get_weather", "parameters": {"ci'),
    ("llama3", "<|python_tag|>import math\nprint(math.pi)", "import math\nprint(math.pi)"),
]


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize(("family", "output", "content"), BROKEN)
def test_broken_calls_come_back_as_content(family, output, content, how):
    assert parse(family, output, how) == (content, [])


def test_any_split_gives_the_same_events_and_no_marker_leaks():
    # Random soup of markers, JSON pieces and text: however it is cut, the result is the same.
    soup = ["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "[ARGS]",
            "[CALL_ID]", "{", "}", "[", "]", '"', "\\", '"name"', ": ", '"f"', '"arguments"',
            '"parameters"', ", ", "\n", " ", "hi", "é", ";", "<tool", "[TOOL", "get_weather",
            '{"name": "f", "arguments": {"a": "}"}}', '{"name": "g", "parameters": {}}']
    rng = random.Random(7)
    for _ in range(600):
        text = "".join(rng.choice(soup) for _ in range(rng.randint(1, 14)))
        family = rng.choice(["hermes", "llama3", "mistral"])
        whole = parse(family, text, "whole")
        assert parse(family, text, "chars") == whole, (family, text)
        assert parse(family, text, f"seed{rng.random()}") == whole, (family, text)


def test_plain_text_is_emitted_promptly_and_holdback_is_bounded():
    parser = ToolCallParser("hermes")
    assert parser.feed("Hello, wor") == [ContentDelta("Hello, wor")]
    assert parser.feed("ld <tool_") == [ContentDelta("ld")]  # " <tool_" may start a call
    assert parser.feed("x") == [ContentDelta(" <tool_x")]
    assert parser.feed("a" * 5000 + "<tool_cal") == [ContentDelta("a" * 5000)]
    assert parser.finish() == [ContentDelta("<tool_cal")]
    # A bare JSON answer is given up as a call as soon as its first key rules a call out.
    llama = ToolCallParser("llama3")
    assert llama.feed('{"answer') == []
    assert llama.feed('": 4') == [ContentDelta('{"answer": 4')]


def test_chains_after_another_parser():
    chain = Chain(PassThrough(), ToolCallParser("hermes"))
    events = chain.feed("Hi.<tool_")
    events += chain.feed('call>{"name": "f", "arguments": {"a": 1}}</tool_call>')
    events += chain.finish()
    assert events == [ContentDelta("Hi."), ToolCall(name="f", arguments={"a": 1})]


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown tool-call family"):
        ToolCallParser("gpt-oss")


def test_deeply_nested_arguments_from_the_model_are_content_not_a_crash():
    # A model can emit thousands of brackets within num_ctx: json.loads would raise
    # RecursionError; the call is not one we can make, so it stays text.
    deep = "[" * 50_000 + "]" * 50_000
    output = '<tool_call>\n{"name": "f", "arguments": ' + deep + "}\n</tool_call>"
    content, calls = parse("hermes", output, "whole")
    assert calls == [] and deep in content
