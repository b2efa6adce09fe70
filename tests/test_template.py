"""Chat templates render in a sandbox; hostile templates are stopped before they run anything."""

import pytest

from chatcli.core.errors import TemplateError
from chatcli.engine.template import ChatTemplate

MSGS = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


def test_renders_chatml_like_template():
    t = ChatTemplate(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    out = t.render(MSGS)
    assert out == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_fallback_is_chatml_with_text_stops():
    t = ChatTemplate(None)
    assert t.is_fallback
    assert "<|im_start|>user\nU<|im_end|>" in t.render(MSGS)
    assert "<|im_end|>" in t.stop_strings


def test_tojson_and_raise_exception_helpers():
    t = ChatTemplate("{{ messages[0] | tojson }}")
    assert t.render(MSGS) == '{"role": "system", "content": "S"}'
    bad = ChatTemplate("{{ raise_exception('only user roles') }}", model_name="m")
    with pytest.raises(TemplateError, match="only user roles"):
        bad.render(MSGS)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__['os'].system('touch /tmp/pwned') }}",
        "{{ cycler.__init__.__globals__.os.system('id') }}",
        "{% import 'os' as os %}{{ os.system('id') }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
    ],
)
def test_hostile_templates_are_refused(source):
    with pytest.raises(TemplateError):
        ChatTemplate(source, model_name="evil").render(MSGS)


def test_syntax_error_is_a_template_error():
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for %}", model_name="broken")
