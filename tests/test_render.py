"""Unit tests for chatcli.repl.render: the block splitter, the stats block, the renderers."""

from __future__ import annotations

import io
import random
import re
import time

import pytest

from chatcli.core.events import Metrics
from chatcli.repl.render import (
    Block,
    BlockSplitter,
    MarkdownRenderer,
    PlainRenderer,
    _Rendered,
    format_stats,
    make_renderer,
)

# ---------------------------------------------------------------------------- BlockSplitter


def split(text: str, max_lines: int = 100, chunk: int | None = None) -> list[Block]:
    splitter = BlockSplitter(max_lines)
    blocks: list[Block] = []
    step = chunk or len(text) or 1
    for i in range(0, len(text), step):
        blocks += splitter.feed(text[i : i + step])
    return blocks + splitter.finish()


def texts(blocks: list[Block]) -> list[str]:
    return [b.text for b in blocks]


def test_blank_line_ends_a_paragraph_and_sets_gap_before():
    splitter = BlockSplitter(10)
    assert splitter.feed("First para\ncontinues.\n") == []
    assert splitter.tail == "First para\ncontinues.\n"
    assert splitter.feed("\nSecond") == [Block("First para\ncontinues.")]
    assert splitter.tail == "Second"
    assert splitter.finish() == [Block("Second", gap_before=True)]
    assert splitter.tail == ""


def test_gap_before_follows_the_source():
    blocks = split("\n\nalpha\n\n\nbeta\ngamma\n# Head\ndelta\n\n## Sub\n")
    assert [(b.text, b.gap_before) for b in blocks] == [
        ("alpha", False),  # nothing comes before the first block
        ("beta\ngamma", True),
        ("# Head", False),
        ("delta", False),
        ("## Sub", True),
    ]


def test_heading_is_a_block_once_its_line_is_complete():
    splitter = BlockSplitter(10)
    assert splitter.feed("# Tit") == []
    assert splitter.feed("le\nBody") == [Block("# Title")]
    assert splitter.tail == "Body"
    assert texts(split("#hashtag is text\n")) == ["#hashtag is text"]


def test_fenced_code_keeps_blank_lines_and_ends_at_the_closing_fence():
    source = "Intro:\n```python\ndef f():\n\n    return 1\n```\nAfter.\n"
    assert texts(split(source)) == [
        "Intro:",
        "```python\ndef f():\n\n    return 1\n```",
        "After.",
    ]


def test_tilde_fence_and_longer_closing_marker():
    assert texts(split("~~~\n```\nx\n~~~\nnext\n")) == ["~~~\n```\nx\n~~~", "next"]
    assert texts(split("````md\n```\ninner\n```\n`````\n")) == ["````md\n```\ninner\n```\n`````"]


def test_unclosed_fence_is_returned_by_finish():
    splitter = BlockSplitter(10)
    assert splitter.feed("```js\nlet a = 1;\n\nlet b") == []
    assert splitter.tail == "```js\nlet a = 1;\n\nlet b"
    assert texts(splitter.finish()) == ["```js\nlet a = 1;\n\nlet b"]


def test_long_code_block_is_cut_into_fenced_parts_with_the_language_kept():
    code = [f"x_{i} = {i}" for i in range(11)]
    blocks = split("```python\n" + "\n".join(code) + "\n```\nafter\n", max_lines=4)
    parts, after = blocks[:-1], blocks[-1]
    assert after.text == "after"
    assert len(parts) >= 3
    body: list[str] = []
    for i, block in enumerate(parts):
        lines = block.text.split("\n")
        assert lines[0] == "```python"
        assert lines[-1] == "```"
        assert len(lines) - 2 <= 5
        assert block.gap_before is False
        assert block.continued is (i < len(parts) - 1)
        body += lines[1:-1]
    assert body == code


def test_list_is_cut_before_an_item_and_numbers_are_kept():
    items = [f"{i}. item {i}" for i in range(1, 11)]
    blocks = split("\n".join(items) + "\n", max_lines=4)
    assert len(blocks) > 1
    for block in blocks:
        assert re.match(r"\d+\. item", block.text)
        assert not block.gap_before
    assert "\n".join(texts(blocks)).split("\n") == items


def test_list_item_continuation_lines_stay_with_their_item():
    items = [f"- item {i}\n  more about {i}" for i in range(8)]
    blocks = split("\n".join(items) + "\n", max_lines=4)
    assert len(blocks) > 1
    assert all(b.text.startswith("- item") for b in blocks)
    assert "\n".join(texts(blocks)) == "\n".join(items)


def test_long_paragraph_is_cut_at_line_boundaries():
    lines = [f"line {i}" for i in range(10)]
    blocks = split("\n".join(lines) + "\n", max_lines=4)
    assert [len(b.text.split("\n")) for b in blocks] == [4, 4, 2]
    assert "\n".join(texts(blocks)).split("\n") == lines


def test_a_table_is_never_cut_and_its_preview_is_bounded():
    # Two parts would print the header twice, with different column widths.
    header = ["| a | b |", "|---|---|"]
    rows = [f"| {i} | x |" for i in range(300)]
    splitter = BlockSplitter(4)
    assert splitter.feed("\n".join(header + rows) + "\n") == []
    preview = splitter.preview().split("\n")
    assert preview[:2] == header and preview[2:] == rows[-4:] + [""]
    assert texts(splitter.feed("\nafter\n")) == ["\n".join(header + rows)]


def rendered(source: str, width: int = 40) -> list[str]:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, force_terminal=True, no_color=True)
    lines = _Rendered(source).lines(console, console.options)
    return ["".join(seg.text for seg in line).rstrip() for line in lines]


def test_ordered_items_are_numbered_with_a_dot():
    lines = rendered("1. First\n2. Second\n   - inner\n")
    assert lines[:2] == [" 1. First", " 2. Second"]
    assert lines[2].startswith("     ") and "inner" in lines[2]


def test_long_code_lines_wrap_under_a_marker_and_keep_every_character():
    code = "x = call(" + ", ".join(f"arg_{i}" for i in range(20)) + ")"
    lines = rendered(f"```python\n{code}\n  short = 1\n```\n")
    body = [line for line in lines if line.strip()]
    assert all(len(line) <= 40 for line in lines)
    assert body[0].startswith(" x = call(") and body[1].startswith(" ↪ ")
    assert body[-1] == "   short = 1"  # indentation kept; an unwrapped line gets no marker
    joined = body[0][1:] + "".join(line[3:] for line in body[1:-1])
    assert joined == code


DOCUMENT = (
    "# Title\n\nSome *intro* text\nover two lines.\n\n"
    "```python\n" + "".join(f"print({i})\n\n" for i in range(30)) + "```\n\n"
    + "".join(f"- point {i}\n" for i in range(25))
    + "\n| h | v |\n|---|---|\n" + "".join(f"| {i} | {i * i} |\n" for i in range(12))
    + "\n~~~\nunclosed " * 3
)


@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_chunking_does_not_change_the_blocks(chunk):
    assert split(DOCUMENT, max_lines=6, chunk=chunk) == split(DOCUMENT, max_lines=6)


def test_random_chunks_give_the_same_blocks():
    rng = random.Random(3)
    splitter = BlockSplitter(6)
    blocks: list[Block] = []
    i = 0
    while i < len(DOCUMENT):
        n = rng.randint(1, 12)
        blocks += splitter.feed(DOCUMENT[i : i + n])
        i += n
    assert blocks + splitter.finish() == split(DOCUMENT, max_lines=6)


def test_work_per_feed_is_bounded():
    paragraph = "word " * 12 + "\n"
    code = "```python\n" + "x = 1  # a line of code\n" * 200 + "```\n\n"
    text = (paragraph * 60 + "\n" + code) * 4
    text = text[:20_000]
    splitter = BlockSplitter(10)
    longest_tail = 0
    start = time.perf_counter()
    for ch in text:
        splitter.feed(ch)
        if ch == "\n":
            longest_tail = max(longest_tail, len(splitter.tail))
    splitter.finish()
    assert time.perf_counter() - start < 2.0
    assert longest_tail < 1_000


# ---------------------------------------------------------------------------- format_stats


def test_format_stats_matches_ollama():
    metrics = Metrics(
        total_duration=1_234_567_000,
        load_duration=12_300_000,
        prompt_eval_count=26,
        prompt_eval_duration=107_300_000,
        eval_count=298,
        eval_duration=4_289_000_000,
    )
    assert format_stats(metrics) == (
        "total duration:       1.234567s\n"
        "load duration:        12.3ms\n"
        "prompt eval count:    26 token(s)\n"
        "prompt eval duration: 107.3ms\n"
        "prompt eval rate:     242.31 tokens/s\n"
        "eval count:           298 token(s)\n"
        "eval duration:        4.289s\n"
        "eval rate:            69.48 tokens/s"
    )


def test_format_stats_shows_the_cached_prompt_tokens_and_rates_the_rest():
    metrics = Metrics(prompt_eval_count=126, prompt_cached_count=100,
                      prompt_eval_duration=100_000_000, eval_count=1, eval_duration=1)
    text = format_stats(metrics)
    assert "prompt eval count:    126 token(s)\nprompt cached count:  100 token(s)\n" in text
    assert "prompt eval rate:     260.00 tokens/s" in text  # 26 evaluated in 0.1 s


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (999, "999ns"),
        (1_500, "1.5µs"),
        (850_000, "850µs"),
        (12_300_000, "12.3ms"),
        (1_000_000_000, "1s"),
        (123_500_000_000, "2m3.5s"),
        (3_600_000_000_000, "1h0m0s"),
    ],
)
def test_durations_print_like_go(ns, text):
    assert format_stats(Metrics(total_duration=ns)) == f"total duration:       {text}"


def test_zero_durations_are_left_out_instead_of_dividing_by_zero():
    assert format_stats(Metrics()) == ""
    assert format_stats(Metrics(eval_count=5)) == "eval count:           5 token(s)"


# ---------------------------------------------------------------------------- renderers


def stream(renderer, *pieces: str, thinking: tuple[str, ...] = ()) -> None:
    renderer.begin()
    for piece in thinking:
        renderer.thinking(piece)
    for piece in pieces:
        renderer.content(piece)
    renderer.end()


def test_make_renderer_picks_markdown_only_for_terminals():
    out = io.StringIO()
    assert isinstance(make_renderer(file=out), PlainRenderer)
    assert not isinstance(make_renderer(file=out), MarkdownRenderer)
    assert isinstance(make_renderer(file=out, force_terminal=True), MarkdownRenderer)
    plain = make_renderer(markdown=False, file=out, force_terminal=True)
    assert type(plain) is PlainRenderer


def test_plain_output_is_the_text_as_received_without_escape_codes():
    out = io.StringIO()
    renderer = make_renderer(file=out)
    stream(renderer, "Hello", ",  **world**", "\n\n", "- a\n- b", thinking=("Let me ", "see."))
    renderer.tool_call("get_weather", {"city": "Paris"})
    renderer.note("dropped 4 old messages")
    renderer.stats(Metrics(eval_count=3, eval_duration=1_000_000_000))
    renderer.info("line one\nline two")
    assert out.getvalue() == (
        "Thinking...\nLet me see.\n...done thinking.\n\n"
        "Hello,  **world**\n\n- a\n- b\n"
        '→ get_weather({"city": "Paris"})\n'
        "dropped 4 old messages\n"
        "eval count:           3 token(s)\neval duration:        1s\n"
        "eval rate:            3.00 tokens/s\n"
        "line one\nline two\n"
    )
    assert "\x1b" not in out.getvalue()


def test_hide_thinking_shows_only_the_answer():
    out = io.StringIO()
    stream(make_renderer(file=out, hide_thinking=True), "Answer.", thinking=("secret",))
    assert out.getvalue() == "Answer.\n"


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (("abc",), "abc\n"),
        (("abc\n",), "abc\n"),
        (("abc", "\n\n", "\n"), "abc\n"),
        (("a\n\nb",), "a\n\nb\n"),
        ((), ""),
    ],
)
def test_end_leaves_exactly_one_newline(pieces, expected):
    out = io.StringIO()
    stream(make_renderer(file=out), *pieces)
    assert out.getvalue() == expected


def test_error_goes_to_stderr(capsys):
    out = io.StringIO()
    make_renderer(file=out).error("model not found")
    assert out.getvalue() == ""
    assert capsys.readouterr().err == "model not found\n"


WORDS = (
    "The quick brown fox jumps over the lazy dog while streaming tokens arrive "
    "in small uneven pieces, and nothing may be cut in the middle of a word."
)


def test_wordwrap_breaks_between_words_on_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "24")
    out = io.StringIO()
    renderer = make_renderer(markdown=False, file=out, force_terminal=True)
    rng = random.Random(5)
    pieces, i = [], 0
    while i < len(WORDS):
        n = rng.randint(1, 4)
        pieces.append(WORDS[i : i + n])
        i += n
    stream(renderer, *pieces)
    text = out.getvalue()
    assert "\x1b" not in text  # NO_COLOR is set by the test fixture
    lines = text.rstrip("\n").split("\n")
    assert len(lines) > 4
    assert all(len(line) <= 24 for line in lines)
    assert " ".join(line.strip() for line in lines) == WORDS


def test_no_wordwrap_and_no_terminal_never_insert_newlines(monkeypatch):
    monkeypatch.setenv("COLUMNS", "24")
    for renderer_args in ({"force_terminal": True, "wordwrap": False}, {}):
        out = io.StringIO()
        stream(make_renderer(markdown=False, file=out, **renderer_args), WORDS)
        assert out.getvalue() == WORDS + "\n"


def test_thinking_is_dim_on_a_colour_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR")
    out = io.StringIO()
    renderer = PlainRenderer(out, terminal=True, width=80)
    stream(renderer, "Answer", thinking=("hmm",))
    text = out.getvalue()
    assert text.startswith("\x1b[2mThinking...\nhmm")
    assert text.endswith("\n\nAnswer\n")
    assert text.count("\x1b[2m") == text.count("\x1b[0m") == 2
    assert re.sub(r"\x1b\[\d+m", "", text) == "Thinking...\nhmm\n...done thinking.\n\nAnswer\n"


def test_markdown_renderer_survives_an_interrupted_answer():
    out = io.StringIO()
    renderer = MarkdownRenderer(out)
    renderer.end()  # nothing begun: nothing to do
    renderer.begin()
    renderer.content("Some **bold** text\n\n```python\nprint('x')\n")
    renderer.end()
    renderer.end()
    renderer.note("a note")
    text = re.sub(r"\x1b\[[\d;?]*[A-Za-z]", "", out.getvalue())
    assert "Some bold text" in text
    assert "print('x')" in text
    assert text.endswith("a note\n")


# ---------------------------------------------------------------------------- the painter thread

_SGR = re.compile(r"\x1b\[[0-9;]*m")


class _SlowTerminal(io.StringIO):
    """A terminal that takes ``delay`` seconds for every write (a slow link, a busy emulator)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay, self.writes = delay, 0

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:  # rich also writes empty strings, which cost nothing
            self.writes += 1
            time.sleep(self.delay)
        return super().write(text)


ANSWER = "## Title\n\nSome *text* here.\n\n```python\n" + "x = compute(1)\n" * 40 + "```\n\nBye.\n"


def test_decoding_never_waits_for_the_terminal():
    """content() only hands the text over: a terminal that takes 0.2 s per write does not slow
    the caller (drawn on the caller's thread, 300 pieces would wait for several writes)."""
    out = _SlowTerminal(0.2)
    renderer = MarkdownRenderer(out)
    renderer.begin()
    pieces = [ANSWER[i : i + 4] for i in range(0, len(ANSWER), 4)]
    start = time.perf_counter()
    for piece in pieces:
        renderer.content(piece)
        time.sleep(0.002)
    fed = time.perf_counter() - start
    renderer.end()
    assert fed < 0.2 * 2 + len(pieces) * 0.002, fed  # generous; the drawn version takes > 2 s
    text = "\n".join(_screen(out.getvalue(), 80, 25))
    assert "Title" in text and text.count("x = compute(1)") == 40 and "Bye." in text


def _screen(raw: str, columns: int, rows: int) -> list[str]:
    """What a terminal shows, scrollback included, after ``raw``."""
    import pyte

    screen = pyte.HistoryScreen(columns, rows, history=10_000)
    pyte.Stream(screen).feed(raw.replace("\n", "\r\n"))  # the tty's ONLCR
    lines = ["".join(c.data for c in (line[x] for x in range(columns))) for line in
             screen.history.top]
    lines += screen.display
    return [line.rstrip() for line in lines]


def test_redraws_are_bounded_in_rate_whatever_the_token_rate():
    out = _SlowTerminal(0)
    renderer = MarkdownRenderer(out)
    renderer.begin()
    start = time.perf_counter()
    for i in range(3000):  # ~3000 tokens as fast as they come
        renderer.content(f"w{i} ")
        if i % 100 == 0:
            time.sleep(0.03)
    elapsed = time.perf_counter() - start
    renderer.end()
    # one write to hide the cursor, one per redraw (at most 10 a second), two at the end
    assert out.writes <= 1 + elapsed / 0.1 + 2 + 2, (out.writes, elapsed)
    assert "w2999" in out.getvalue()


def test_a_failure_while_painting_is_raised_by_end(monkeypatch):
    def broken(self, text):
        raise RuntimeError("paint failed")

    monkeypatch.setattr(MarkdownRenderer, "_paint", broken)
    before = __import__("sys").getswitchinterval()
    renderer = MarkdownRenderer(_SlowTerminal(0))
    renderer.begin()
    renderer.content("text")
    with pytest.raises(RuntimeError, match="paint failed"):
        renderer.end()
    assert __import__("sys").getswitchinterval() == before  # restored after the answer


def test_rows_end_in_erase_to_end_of_line_not_padding():
    """A code block's rows are not padded with spaces to the window's width (a terminal that
    rewraps on resize would make each two rows); they end in EL, which paints the background."""
    out = _SlowTerminal(0)
    renderer = MarkdownRenderer(out, threaded=False)
    renderer.begin()
    renderer.content("Text.\n\n```python\nx = 1\nprint(x)\n```\n\nMore text.\n")
    renderer.end()
    rows = _SGR.sub("", out.getvalue()).split("\n")
    assert any("print(x)" in row for row in rows)
    for row in rows:
        assert not re.search(r" +(\x1b\[K)?\r?$", row), repr(row)


def test_screen_is_never_erased_from_the_top_left_corner_with_a_plain_ed():
    """tmux pushes the whole screen into its scrollback on ED at the top-left corner (its
    scroll-on-clear), which doubled lines: the renderer erases with EL + ED one column on."""
    out = _SlowTerminal(0)
    renderer = MarkdownRenderer(out)
    renderer.begin()
    renderer.content("Hello **there**\n\n- a\n- b\n")
    renderer.end()
    assert "\r\x1b[J" not in out.getvalue() and "\x1b[C\x1b[J" in out.getvalue()
