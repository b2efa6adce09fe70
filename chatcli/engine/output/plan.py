"""How to ask one model for format, tools and thinking, judged from its chat template.

``plan()`` turns a request's ``tools``, ``think`` and ``format`` into what the engine needs: the
template variables (tool list, ``enable_thinking``, ``reasoning_effort``), the messages as this
template wants them, the grammar, the output parsers, and whether special tokens must be
detokenized (gpt-oss channels, ``[TOOL_CALLS]`` and ``<|python_tag|>`` are control tokens).
A request the model cannot serve is a clear error naming the model, as Ollama's are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatcli.core.errors import NotSupportedError
from chatcli.engine.output.parsing import OutputParser, PassThrough, pipeline

if TYPE_CHECKING:
    from chatcli.models.gguf import GGUFInfo

THINK_VALUES = (True, False, "low", "medium", "high")


@dataclass
class Plan:
    messages: list[dict[str, Any]]
    template_vars: dict[str, Any] = field(default_factory=dict)
    grammar: str | None = None
    special: bool = False
    # Given the rendered prompt, the parser for the output (thinking may already be open).
    make_parser: Callable[[str], OutputParser] = lambda prompt: pipeline(PassThrough())


def thinking_style(template: str) -> str | None:
    from chatcli.engine.output.thinking import style_for

    return style_for(template)


def tool_family(template: str) -> str | None:
    from chatcli.engine.output.toolcalls import family_for

    return family_for(template)


def capabilities(header: GGUFInfo, projector: Path | None = None) -> list[str]:
    """What a model can do, as ``chat show``, /show and /api/show list it, judged from its GGUF
    header and files. Tools and thinking are ``plan()``'s own tests on the template the engine
    formats with, so a capability shown is one a request can use."""
    from chatcli.engine.output.toolcalls import supports_tools
    from chatcli.models.modelinfo import chat_template, is_embedding

    template = chat_template(header)
    caps = ["embedding"] if is_embedding(header) else ["completion"]
    if supports_tools(template):
        caps.append("tools")
    if thinking_style(template) is not None:
        caps.append("thinking")
    if projector is not None:
        caps.append("vision")
    return caps


def plan(
    template: str,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Any = None,
    think: Any = None,
    format: Any = None,
) -> Plan:
    from chatcli.engine.output.structured import grammar_for

    if think is not None and think not in THINK_VALUES:
        raise NotSupportedError(f"think must be true, false, 'low', 'medium' or 'high', "
                                f"not {think!r}")
    result = Plan(messages=[dict(m) for m in messages], grammar=grammar_for(format))
    parsers: list[Callable[[str], OutputParser]] = []

    style = thinking_style(template) if template else None
    if think not in (None, False) and style is None:
        raise NotSupportedError(f"model '{model}' does not support thinking")
    if style is not None:
        from chatcli.engine.output.thinking import (
            ThinkingParser,
            opens_in_thinking,
            template_switches,
        )

        result.template_vars.update(template_switches(style, think))
        result.special |= style == "harmony"
        show = think is not False
        parsers.append(lambda prompt: ThinkingParser(
            style, starts_in_thinking=opens_in_thinking(prompt), show=show))

    if tools:
        from chatcli.engine.output.toolcalls import ToolCallParser, template_messages
        from chatcli.engine.output.tools import normalize_tools

        family = tool_family(template)  # None: no tool support (supports_tools is False)
        if family is None:
            raise NotSupportedError(f"model '{model}' does not support tools")
        result.template_vars["tools"] = normalize_tools(tools)
        result.special |= family in ("mistral", "llama3")
        parsers.append(lambda prompt: ToolCallParser(family))
    if any(m.get("tool_calls") or m.get("role") == "tool" for m in result.messages):
        from chatcli.engine.output.toolcalls import template_messages

        result.messages = template_messages(result.messages)

    def make_parser(prompt: str) -> OutputParser:
        return pipeline(*[make(prompt) for make in parsers]) if parsers \
            else pipeline(PassThrough())

    result.make_parser = make_parser
    return result
