"""Telling a thinking model's reasoning from its answer: template detection and stream parsing."""

from __future__ import annotations

import random
import time

import jinja2
import pytest

from chatcli.core.errors import InvalidOptionError
from chatcli.core.events import ContentDelta, ThinkingDelta, ToolCall
from chatcli.engine.output.parsing import Chain, PassThrough
from chatcli.engine.output.thinking import (
    ThinkingParser,
    opens_in_thinking,
    strip_thinking,
    style_for,
    template_switches,
)

# ------------------------------------------------------------------ template excerpts

QWEN3 = """\
{%- for message in messages %}
    {%- if message.role == "assistant" %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n')\
.split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

DEEPSEEK_R1 = """\
{{ bos_token }}{%- for message in messages %}
{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}
{%- if message['role'] == 'assistant' %}{% set content = message['content'] %}\
{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}\
{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}
{%- endfor -%}
{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"""

GPT_OSS = """\
{{- "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\\n" }}
{{- "Reasoning: " + reasoning_effort + "\\n\\n" }}
{{- "# Valid channels: analysis, commentary, final.<|end|>" }}
{%- for message in messages %}
    {%- if message.role == "assistant" and message.thinking %}
        {{- "<|start|>assistant<|channel|>analysis<|message|>" + message.thinking + "<|end|>" }}
    {%- elif message.role == "assistant" %}
        {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|end|>" }}
    {%- else %}
        {{- "<|start|>" + message.role + "<|message|>" + message.content + "<|end|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start|>assistant{%- endif %}"""

CHATML = """\
{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] \
+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
{{ '<|im_start|>assistant\\n' }}{% endif %}"""


def render(source: str, **variables) -> str:
    messages = [{"role": "user", "content": "What is 2+2?"}]
    return jinja2.Template(source).render(
        messages=messages, add_generation_prompt=True, bos_token="<s>", **variables
    )


@pytest.mark.parametrize(
    ("source", "style"),
    [(QWEN3, "tags"), (DEEPSEEK_R1, "tags"), (GPT_OSS, "harmony"), (CHATML, None)],
)
def test_style_for_templates(source, style):
    assert style_for(source) == style


def test_style_for_ollama_go_template():
    go = "{{- if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}"
    assert style_for(go) == "tags"


def test_opens_in_thinking_on_rendered_prompts():
    assert opens_in_thinking(render(DEEPSEEK_R1))
    assert not opens_in_thinking(render(QWEN3))
    # Qwen3 with thinking off: the empty block in the prompt is closed.
    no_think = render(QWEN3, **template_switches("tags", False))
    assert no_think.endswith("<think>\n\n</think>\n\n")
    assert not opens_in_thinking(no_think)
    assert not opens_in_thinking(render(CHATML))


def test_opens_in_thinking_ignores_a_quoted_tag_earlier():
    prompt = "<|im_start|>user\nWhat does <think> do?<|im_end|>\n<|im_start|>assistant\n"
    assert not opens_in_thinking(prompt)
    assert opens_in_thinking("<｜Assistant｜><think>\n")


@pytest.mark.parametrize(
    ("style", "think", "expected"),
    [
        ("tags", None, {}),
        ("tags", True, {"enable_thinking": True}),
        ("tags", False, {"enable_thinking": False}),
        ("tags", "high", {"enable_thinking": True}),
        ("harmony", None, {}),
        ("harmony", True, {"reasoning_effort": "medium"}),
        ("harmony", False, {"reasoning_effort": "low"}),
        ("harmony", "low", {"reasoning_effort": "low"}),
        ("harmony", "high", {"reasoning_effort": "high"}),
        (None, True, {}),
    ],
)
def test_template_switches(style, think, expected):
    assert template_switches(style, think) == expected


def test_template_switches_rejects_unknown_effort():
    with pytest.raises(InvalidOptionError, match="think must be"):
        template_switches("harmony", "max")


def test_reasoning_effort_reaches_the_template():
    prompt = render(GPT_OSS, **template_switches("harmony", True))
    assert "Reasoning: medium" in prompt and prompt.endswith("<|start|>assistant")


def test_strip_thinking():
    assert strip_thinking("<think>\nhmm\n</think>\n\nThe answer.") == "The answer."
    assert strip_thinking("No thinking here.") == "No thinking here."
    assert strip_thinking("A<think>x</think> B<think>y</think>C") == "ABC"


# ------------------------------------------------------------------ streaming


def chunkings(text: str):
    """The same text fed all at once, a character at a time, and in random small pieces."""
    yield [text]
    yield list(text)
    rng = random.Random(1234)
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 5)
        pieces.append(text[i : i + n])
        i += n
    yield pieces


def run(parser, pieces):
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


def summary(events):
    """Joined thinking, joined content, and the order of the kinds (runs collapsed)."""
    order: list[str] = []
    for e in events:
        kind = {ThinkingDelta: "thinking", ContentDelta: "content", ToolCall: "tool"}[type(e)]
        if not order or order[-1] != kind:
            order.append(kind)
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    return thinking, content, order


def check(text, expected, **parser_args):
    for pieces in chunkings(text):
        events = run(ThinkingParser(**parser_args), pieces)
        assert all(e.text for e in events if not isinstance(e, ToolCall)), events
        assert summary(events) == expected, pieces


def test_qwen3_output():
    out = "<think>\nOkay, the user asks for 2+2. That is 4.\n</think>\n\n2 + 2 = **4**."
    check(out, ("Okay, the user asks for 2+2. That is 4.", "2 + 2 = **4**.",
                ["thinking", "content"]), style="tags")


def test_deepseek_r1_output_after_an_opened_block():
    out = "Alright, simple arithmetic.\n2+2=4.\n</think>\n\nThe answer is **4**."
    check(out, ("Alright, simple arithmetic.\n2+2=4.", "The answer is **4**.",
                ["thinking", "content"]), style="tags", starts_in_thinking=True)


def test_starts_in_thinking_tolerates_a_repeated_open_tag():
    out = "<think>\nHmm.\n</think>\nYes."
    check(out, ("Hmm.", "Yes.", ["thinking", "content"]), style="tags", starts_in_thinking=True)


def test_unclosed_think_is_all_thinking():
    check("<think>\nStill working on it, 2+2 is </thi",
          ("Still working on it, 2+2 is </thi", "", ["thinking"]), style="tags")
    check("Still going\n\n", ("Still going", "", ["thinking"]),
          style="tags", starts_in_thinking=True)


def test_empty_think_block_gives_only_content():
    check("<think>\n\n</think>\n\nHello!", ("", "Hello!", ["content"]), style="tags")


def test_no_think_block_is_all_content_with_its_whitespace():
    check("  Hello there.\n", ("", "  Hello there.\n", ["content"]), style="tags")
    check("<", ("", "<", ["content"]), style="tags")
    check("", ("", "", []), style="tags")


def test_look_alike_markers_stay_where_they_are():
    check("<thinking> is an HTML-ish tag; so is think> and <think >.",
          ("", "<thinking> is an HTML-ish tag; so is think> and <think >.", ["content"]),
          style="tags")
    out = "<think>I could write <thinking>, think> or </thinker here.</think>Done: <think>x</think>"
    check(out, ("I could write <thinking>, think> or </thinker here.",
                "Done: <think>x</think>", ["thinking", "content"]), style="tags")


def test_show_false_drops_thinking_only():
    out = "<think>\nsecret reasoning\n</think>\n\nThe answer."
    check(out, ("", "The answer.", ["content"]), style="tags", show=False)


def test_thinking_streams_before_the_block_closes():
    parser = ThinkingParser("tags")
    assert parser.feed("<think>\nFirst") == [ThinkingDelta("First")]
    assert parser.feed(" idea.\n<") == [ThinkingDelta(" idea.")]  # "\n<" may be "\n</think>"
    assert parser.feed("/think>\n\nAns") == [ContentDelta("Ans")]
    assert parser.feed("wer") == [ContentDelta("wer")]
    assert parser.finish() == []


GPT_OSS_OUT = (
    "<|channel|>analysis<|message|>User asks 2+2. Simple: 4.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = **4**.<|return|>"
)


def test_harmony_output():
    check(GPT_OSS_OUT, ("User asks 2+2. Simple: 4.", "2 + 2 = **4**.", ["thinking", "content"]),
          style="harmony")


def test_harmony_without_the_final_marker():
    # llama.cpp stops on <|return|> and may not pass it on.
    check(GPT_OSS_OUT.removesuffix("<|return|>"),
          ("User asks 2+2. Simple: 4.", "2 + 2 = **4**.", ["thinking", "content"]),
          style="harmony")


def test_harmony_commentary_and_text_before_markers():
    out = (
        "Sure. <|channel|>commentary<|message|>Let me check.<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|> Checked.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Done: a<b and x<|y|> stay.<|return|>"
    )
    check(out, ("Let me check. Checked.", "Sure. Done: a<b and x<|y|> stay.",
                ["content", "thinking", "content"]), style="harmony")


def test_harmony_show_false():
    check(GPT_OSS_OUT, ("", "2 + 2 = **4**.", ["content"]), style="harmony", show=False)


@pytest.mark.parametrize("end", ["<|call|>", ""])
def test_harmony_tool_call(end):
    out = (
        "<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Paris"}' + end
    )
    for pieces in chunkings(out):
        events = run(ThinkingParser("harmony"), pieces)
        assert summary(events) == ("Need the weather.", "", ["thinking", "tool"])
        assert events[-1] == ToolCall("get_weather", {"city": "Paris"})


def test_harmony_parser_chains_with_a_content_parser():
    chain = Chain(ThinkingParser("harmony"), PassThrough())
    events = run(chain, list(GPT_OSS_OUT))
    assert summary(events) == ("User asks 2+2. Simple: 4.", "2 + 2 = **4**.",
                               ["thinking", "content"])


def test_unknown_style_is_refused():
    with pytest.raises(ValueError):
        ThinkingParser("xml")


@pytest.mark.parametrize(
    ("style", "opening"),
    [("tags", "<think>\n"), ("harmony", "<|channel|>analysis<|message|>")],
)
def test_work_per_piece_does_not_grow(style, opening):
    # 200k characters of reasoning, one at a time, with whitespace and near-markers mixed in.
    unit = "Let me think < about\nthis </thin <| again.  \n"
    text = (unit * (200_000 // len(unit) + 1))[:200_000]
    parser = ThinkingParser(style)
    parser.feed(opening)
    longest = total = 0
    start = time.process_time()
    for ch in text:
        for event in parser.feed(ch):
            total += len(event.text)
        longest = max(longest, parser.held_back)
    elapsed = time.process_time() - start
    total += sum(len(e.text) for e in parser.finish())
    assert total == len(text.rstrip() if style == "tags" else text)
    assert longest <= 16
    assert elapsed < 1.0, f"{elapsed:.2f}s of CPU for 200k one-character pieces"


FRAGMENTS = {
    "tags": ["<think>", "</think>", "<", "/", "think", ">", " ", "\n", "a", "b.", "<thi", "</th"],
    "harmony": ["<|channel|>", "analysis", "final", "commentary", "<|message|>", "<|end|>",
                "<|start|>", "assistant", "<|call|>", " to=functions.f", "<|constrain|>", "json",
                "<", "|", ">", "x", " ", "{}", "<|return|>"],
}


@pytest.mark.parametrize("starts_in_thinking", [False, True])
@pytest.mark.parametrize("style", ["tags", "harmony"])
def test_where_the_pieces_break_never_matters(style, starts_in_thinking):
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(FRAGMENTS[style]) for _ in range(rng.randint(0, 25)))
        results = {
            repr(summary(run(ThinkingParser(style, starts_in_thinking=starts_in_thinking), p)))
            for p in chunkings(text)
        }
        assert len(results) == 1, text
