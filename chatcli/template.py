"""Chat formatting with the model's own Jinja template, in a sandbox.

GGUF files carry ``tokenizer.chat_template``, a Jinja template written by whoever published the
model. Rendering it with a plain ``jinja2.Environment`` lets a malicious file run Python
(CVE-2024-34359), so templates are compiled in jinja2's immutable sandbox: attribute access to
dunders, ``import`` and mutation of shared objects are refused, and any refusal becomes a
``TemplateError`` that names the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .errors import TemplateError

# Used when a GGUF has no chat template: ChatML, which llama.cpp also falls back to.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    # Hugging Face's tojson: plain json.dumps (jinja's own escapes <, > and & for HTML).
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template for one model."""

    def __init__(
        self,
        source: str | None,
        *,
        bos_token: str = "",
        eos_token: str = "",
        model_name: str = "model",
    ) -> None:
        from jinja2 import TemplateError as JinjaTemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.is_fallback = not source
        self.source = source or CHATML_TEMPLATE
        self.model_name = model_name
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols"],
            autoescape=False,
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(self.source)
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template of {model_name} does not compile: {e}") from None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text stops implied by the fallback template (real templates use EOG tokens)."""
        return CHATML_STOPS if self.is_fallback else ()

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """Render a conversation into the prompt text the model was trained on."""
        from jinja2 import TemplateError as JinjaTemplateError
        from jinja2.exceptions import SecurityError

        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **variables,
            )
        except TemplateError:
            raise
        except SecurityError as e:
            raise TemplateError(
                f"chat template of {self.model_name} tried an unsafe operation and was stopped: {e}"
            ) from None
        except (JinjaTemplateError, TypeError, ValueError, KeyError, AttributeError,
                IndexError, ZeroDivisionError) as e:
            raise TemplateError(f"chat template of {self.model_name} failed: {e}") from None
