"""think, tools and format wired through the engine and chat(), on tiny GGUFs with real-style
templates (their random output is fine: what matters is where it is routed)."""

import re

import pytest
from conftest import DET
from tiny_gguf import write_tiny_llama

from chatcli import chat
from chatcli.core.errors import NotSupportedError

R1_STYLE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


@pytest.fixture(scope="module")
def r1(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("r1") / "r1.gguf", chat_template=R1_STYLE))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("plain") / "plain.gguf"))


def test_output_after_an_opened_think_tag_is_thinking(r1):
    r = chat(r1, [{"role": "user", "content": "hi"}], think=True,
             options={**DET, "num_predict": 12})
    assert r.message.thinking and r.message.content == ""
    chunks = list(chat(r1, [{"role": "user", "content": "hi"}], think=True, stream=True,
                       options={**DET, "num_predict": 12}))
    deltas = [c for c in chunks if not c.done]
    assert deltas and all(c.message.thinking for c in deltas)
    assert "".join(c.message.thinking for c in deltas) == r.message.thinking


def test_think_false_hides_reasoning_and_default_separates_it(r1):
    hidden = chat(r1, [{"role": "user", "content": "hi"}], think=False,
                  options={**DET, "num_predict": 12})
    assert hidden.message.thinking is None
    default = chat(r1, [{"role": "user", "content": "hi"}], options={**DET, "num_predict": 12})
    assert default.message.thinking  # a thinking model's reasoning never leaks into content


def test_non_thinking_model_refuses_think(plain):
    with pytest.raises(NotSupportedError, match="does not support thinking"):
        chat(plain, [{"role": "user", "content": "hi"}], think=True)
    with pytest.raises(NotSupportedError, match="think must be"):
        chat(plain, [{"role": "user", "content": "hi"}], think="extreme")
    r = chat(plain, [{"role": "user", "content": "hi"}], think=False,
             options={**DET, "num_predict": 2})
    assert r.done


def test_model_without_tool_support_refuses_tools(plain):
    tool = {"type": "function", "function": {"name": "f", "description": "d",
                                             "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(NotSupportedError, match="does not support tools"):
        chat(plain, [{"role": "user", "content": "hi"}], tools=[tool])


def test_thinking_is_kept_out_of_later_turns(r1):
    first = chat(r1, [{"role": "user", "content": "hi"}], think=True,
                 options={**DET, "num_predict": 6})
    messages = [{"role": "user", "content": "hi"}, first.message,
                {"role": "user", "content": "again"}]
    second = chat(r1, messages, think=True, options={**DET, "num_predict": 6})
    assert second.done and second.prompt_eval_count > 0


TEMPLATES = __import__("pathlib").Path(__file__).parent / "templates"


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    template = (TEMPLATES / "qwen3.jinja").read_text()
    # Trained for more than the tools prompt needs: num_ctx is never raised past it.
    return str(write_tiny_llama(tmp_path_factory.mktemp("q3") / "q3.gguf",
                                chat_template=template, context_length=4096))


def get_weather(city: str) -> str:
    """Get the current weather.

    Args:
        city: The city name.
    """
    return "22C"


def test_seed_tool_flow_renders_and_answers(qwen3):
    from chatcli.engine.decode import Engine

    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "22C", "tool_name": "get_weather"},
    ]
    r = chat(qwen3, messages, tools=[get_weather], think=False,
             options={**DET, "num_predict": 4, "num_ctx": 2048})
    assert r.done and r.message.role == "assistant"
    eng = Engine(__import__("pathlib").Path(qwen3))
    try:
        from chatcli.engine.output.plan import plan

        how = plan(eng.template.source, "q3", messages, tools=[get_weather], think=False)
        prompt = eng.render(how.messages, **how.template_vars)
    finally:
        eng.close()
    assert '"name": "get_weather"' in prompt and "<tool_response>\n22C\n</tool_response>" in prompt
    assert "<think>\n\n</think>" in prompt  # think=False reached Qwen3's enable_thinking


def test_tool_calls_come_back_in_the_seed_shape(monkeypatch, qwen3):
    from chatcli.core.events import ContentDelta, Done, ToolCall
    from chatcli.engine.decode import Engine

    def scripted(self, messages, options=None, **kw):
        yield ContentDelta("Let me check.")
        yield ToolCall(name="get_weather", arguments={"city": "Paris"})
        yield Done("stop")

    monkeypatch.setattr(Engine, "chat", scripted)
    r = chat(qwen3, [{"role": "user", "content": "Weather?"}], tools=[get_weather])
    assert r.message.content == "Let me check."
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert call["function"]["arguments"] == {"city": "Paris"}
    chunks = list(chat(qwen3, [{"role": "user", "content": "Weather?"}], tools=[get_weather],
                       stream=True))
    tool_chunk = next(c for c in chunks if c.message.tool_calls)
    assert tool_chunk.done is False and tool_chunk.message.content == ""
    (dumped,) = tool_chunk.model_dump()["message"]["tool_calls"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", dumped.pop("id"))  # Ollama's id form
    assert dumped == {"function": {"name": "get_weather", "arguments": {"city": "Paris"},
                                   "index": 0}}


# -- what is shown is what a request can use -------------------------------------------------

# Mentions tools (the word alone once made /api/show advertise them) but teaches no tool-call
# syntax chatcli can parse, so a request with tools is refused.
TOOLS_WORD_ONLY = (
    "{% if tools %}You may use these tools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL = {"type": "function", "function": {"name": "f", "description": "d",
                                         "parameters": {"type": "object", "properties": {}}}}


def _accepted(template: str) -> set[str]:
    """What the request planner serves for ``template``: tools, thinking."""
    from chatcli.engine.output.plan import plan

    accepted = set()
    for capability, request in (("tools", {"tools": [TOOL]}), ("thinking", {"think": True})):
        try:
            plan(template, "m", [{"role": "user", "content": "hi"}], **request)
        except NotSupportedError:
            continue
        accepted.add(capability)
    return accepted


@pytest.mark.parametrize("template", [
    TOOLS_WORD_ONLY, R1_STYLE, None,
    *((TEMPLATES / name).read_text() for name in ("qwen3.jinja", "llama3.1.jinja",
                                                  "mistral-nemo.jinja")),
], ids=["tools-word-only", "r1", "none", "qwen3", "llama3.1", "mistral-nemo"])
def test_capabilities_shown_are_what_the_planner_accepts(tmp_path, template):
    from chatcli.client.local import LocalClient
    from chatcli.models.resolve import resolve
    from chatcli.serve import facts

    path = write_tiny_llama(tmp_path / "m.gguf", chat_template=template)
    shown = LocalClient().show(str(path))["capabilities"]
    assert facts.show(resolve(str(path)))["capabilities"] == shown  # /api/show says the same
    assert "completion" in shown
    assert set(shown) & {"tools", "thinking"} == _accepted(template or "")


def test_a_template_that_only_mentions_tools_neither_shows_nor_serves_them(tmp_path):
    from chatcli.client.local import LocalClient

    path = str(write_tiny_llama(tmp_path / "w.gguf", chat_template=TOOLS_WORD_ONLY))

    assert "tools" not in LocalClient().show(path)["capabilities"]
    with pytest.raises(NotSupportedError, match="does not support tools"):
        chat(path, [{"role": "user", "content": "hi"}], tools=[TOOL])
