"""Chat templates are bounded in time and size: a hostile template is stopped with one clear
TemplateError (a 4xx over HTTP), never a hang, gigabytes or a raw exception; real templates
render exactly as before."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from chatcli.core.errors import ChatCliError, TemplateError
from chatcli.engine import template
from chatcli.engine.template import ChatTemplate

MSGS = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
REPO = Path(__file__).resolve().parent.parent
TEMPLATES = sorted((Path(__file__).parent / "templates").glob("*.jinja"))

NESTED_LOOPS = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                "{% endfor %}")
DOUBLING = ("{% set ns = namespace(s='a') %}{% for i in range(64) %}"
            "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}")
# A string built at run time and copied a thousand times into a block: 10 GB if unchecked.
RUNTIME_STRING = ("{% set b = 'a' * 10000000 %}{% set ns = namespace() %}{% set ns.x %}"
                  "{% for i in range(1000) %}{{ b }}{% endfor %}{% endset %}{{ ns.x }}")


def _render(source: str, messages=MSGS) -> str:
    return ChatTemplate(source, model_name="evil").render(messages)


def test_nested_loops_stop_at_the_deadline(monkeypatch):
    monkeypatch.setattr(template, "RENDER_SECONDS", 0.5)
    start = time.monotonic()
    with pytest.raises(TemplateError, match="evil was stopped: it ran longer than 0.5 s"):
        _render(NESTED_LOOPS)
    assert time.monotonic() - start < 10


def test_the_deadline_stops_a_render_in_any_thread(monkeypatch):
    monkeypatch.setattr(template, "RENDER_SECONDS", 0.3)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _render("{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}"
                    "{% endfor %}{% endfor %}")
        except BaseException as e:  # noqa: BLE001 - the test inspects what escaped
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [type(e) for e in errors] == [TemplateError, TemplateError]


def test_the_deadline_never_fires_after_a_render_returned(monkeypatch):
    # Many fast renders under a tiny deadline, then plain Python work past it: nothing strays.
    monkeypatch.setattr(template, "RENDER_SECONDS", 0.05)
    t = ChatTemplate(None)
    for _ in range(300):
        assert "<|im_start|>user\nU<|im_end|>" in t.render(MSGS)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        sum(range(1000))
    # and a render that timed out leaves the thread usable
    with pytest.raises(TemplateError, match="longer than"):
        _render(NESTED_LOOPS)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        sum(range(1000))
    assert "U" in t.render(MSGS)


def test_range_over_the_limit_is_a_template_error():
    with pytest.raises(TemplateError, match=r"range\(\) of 1,000,000,000 numbers"):
        _render("{{ range(10**9)|length }}")
    assert _render("{{ range(3)|list }}") == "[0, 1, 2]"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 10**9 }}",
        "{{ [1] * 10**9 }}",
        DOUBLING,
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
        "{% endfor %}",
        "{{ 7 ** 10000000 }}",
        "{{ 'a'.ljust(10**9) }}",
        "{{ 'a'|center(1000000000) }}",
        "{{ '%*d' % (10**9, 1) }}",
        "{{ '{:>1000000000}'.format(1) }}",
        "{{ ('\t' * 1000000).expandtabs(1000) }}",
        "{{ ('a' * 1000000).replace('a', 'a' * 1000) }}",
        "{{ range(100000)|join('x' * 10000000) }}",
        "{{ ('\n' * 1000000)|indent(1000) }}",
        "{{ messages|tojson(indent=100000) }}",
        "{{ [1]|slice(100000000)|list }}",
        "{{ ([[1] * 4000] * 4000)|sum(start=[]) }}",
        RUNTIME_STRING,
        # the same large string referenced 64 times over: cheap to build, 640 MB as text
        "{% set b = 'a' * 10000000 %}{% set l = [b, b, b, b, b, b, b, b] %}"
        "{% set l = [l, l, l, l, l, l, l, l] %}{{ l }}",
        "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'a' * 1000 }}{% endfor %}"
        "{% endfor %}",
    ],
)
def test_size_bombs_are_template_errors(source):
    start = time.monotonic()
    with pytest.raises(TemplateError, match="^chat template of evil was stopped: "):
        _render(source)
    assert time.monotonic() - start < 10


def test_many_values_under_the_limit_cannot_add_up(monkeypatch):
    monkeypatch.setattr(template, "MAX_TOTAL_CHARS", 50_000_000)
    with pytest.raises(TemplateError, match="characters of text in all"):
        _render("{% set ns = namespace(l=[]) %}{% for i in range(10000) %}"
                "{% set ns.l = ns.l + ['a' * 10000000 ~ i] %}{% endfor %}")


def _peak_rss_mb(source: str) -> tuple[str, float]:
    """Render in a child process; its error line and its peak RSS in MB."""
    code = textwrap.dedent(f"""
        import resource
        from chatcli.engine.template import ChatTemplate
        try:
            ChatTemplate({source!r}, model_name="evil").render([{{"role": "user",
                                                                 "content": "hi"}}])
            print("rendered")
        except Exception as e:
            print(type(e).__name__, e)
        print(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 2, (proc.returncode, proc.stdout,
                                                      proc.stderr[-2000:])
    return lines[0], int(lines[1]) / 1024  # VmHWM (this image's own peak) is in KiB


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
@pytest.mark.parametrize("source", ["{{ 'a' * 10**9 }}", DOUBLING, RUNTIME_STRING],
                         ids=["repeat", "doubling", "runtime-string"])
def test_size_bombs_stay_small_in_memory(source):
    error, peak_mb = _peak_rss_mb(source)
    assert error.startswith("TemplateError chat template of evil was stopped: "), error
    assert peak_mb < 500, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_real_templates_render_long_conversations(monkeypatch, path):
    # The size limits grow with the input: a conversation far above the base limits renders,
    # exactly as it does under the default limits.
    messages = [{"role": "system", "content": "Be brief. " * 500}]
    for i in range(40):
        messages.append({"role": "user" if i % 2 == 0 else "assistant",
                         "content": f"message {i} " * 100})
    messages.append({"role": "user", "content": "last"})
    chat_template = ChatTemplate(path.read_text(), bos_token="<s>", eos_token="</s>")
    expected = chat_template.render(messages)
    monkeypatch.setattr(template, "MAX_CHARS", 1000)
    monkeypatch.setattr(template, "MAX_TOTAL_CHARS", 10_000)
    assert chat_template.render(messages) == expected
    assert len(expected) > 40_000


def test_output_over_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(template, "MAX_CHARS", 10_000)
    with pytest.raises(TemplateError, match="output passed"):
        _render("{% for i in range(100000) %}{{ 'abcdefghij' }}{% endfor %}")
    assert len(_render("{% for i in range(100) %}{{ 'abcdefghij' }}{% endfor %}")) == 1000


def test_ordinary_operations_keep_their_results():
    source = ("{{ 'ab' * 3 }}|{{ [1] + [2] }}|{{ 2 ** 10 }}|{{ '%05d' % 42 }}|{{ 'x' ~ 1 }}|"
              "{{ 'a,b'.split(',') | join('-') }}|{{ '{}!'.format('hi') }}|{{ 'x'.center(5) }}|"
              "{{ [1, 2, 3] | sum }}|{{ [[1], [2]] | sum(start=[]) }}|{{ 'a\nb' | indent(2) }}|"
              "{{ {'k': [1]} | tojson(indent=2) }}|{{ '%d' % 10**18 }}")
    assert _render(source) == ("ababab|[1, 2]|1024|00042|x1|a-b|hi!|  x  |6|[1, 2]|a\n  b|"
                               '{\n  "k": [\n    1\n  ]\n}|1000000000000000000')


# -- through the public API and the server ---------------------------------------------------

def _hostile_gguf(tmp_path: Path, source: str) -> Path:
    from tiny_gguf import write_tiny_llama

    return write_tiny_llama(tmp_path / "evil.gguf", chat_template=source)


@pytest.mark.parametrize("source", [NESTED_LOOPS, "{{ 'a' * 10**9 }}", "{{ range(10**9) }}"],
                         ids=["loops", "repeat", "range"])
def test_chat_api_raises_a_chatcli_error(monkeypatch, tmp_path, source):
    from chatcli import chat

    monkeypatch.setattr(template, "RENDER_SECONDS", 0.5)
    model = str(_hostile_gguf(tmp_path, source))
    with pytest.raises(ChatCliError) as caught:
        chat(model, [{"role": "user", "content": "hi"}], options={"num_predict": 2})
    assert isinstance(caught.value, TemplateError)
    assert "\n" not in str(caught.value) and "was stopped" in str(caught.value)


def test_server_answers_400_and_keeps_serving(monkeypatch, tmp_path):
    import httpx
    from live_server import ServerThread
    from tiny_gguf import write_tiny_llama

    from chatcli.serve.app import build_app

    monkeypatch.setattr(template, "RENDER_SECONDS", 0.5)

    from live_server import create_model as create

    good = write_tiny_llama(tmp_path / "good.gguf")
    with ServerThread(build_app()) as server, \
            httpx.Client(base_url=server.url, timeout=120) as http:
        create(http, "evil", _hostile_gguf(tmp_path, NESTED_LOOPS))
        create(http, "good", good)
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": False,
                "options": {"num_predict": 2, "temperature": 0, "num_thread": 1}}
        start = time.monotonic()
        r = http.post("/api/chat", json={**body, "model": "evil"})
        assert r.status_code == 400, r.text
        assert "was stopped: it ran longer than 0.5 s" in json.loads(r.text)["error"]
        assert time.monotonic() - start < 60
        r = http.post("/api/chat", json={**body, "model": "good"})
        assert r.status_code == 200, r.text
        assert r.json()["done"] is True
