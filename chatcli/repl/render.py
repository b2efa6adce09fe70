"""Turning an answer's events into terminal output: streamed Markdown, or plain text for pipes.

``MarkdownRenderer`` keeps the cost of an answer linear in its length: ``BlockSplitter`` cuts the
streamed source into finished blocks, each printed once to the scrollback, and only the unfinished
tail is redrawn in a small live region. ``PlainRenderer`` writes the text as it comes.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from chatcli.core.events import Metrics

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

_DIM, _RED, _RESET = "\x1b[2m", "\x1b[31m", "\x1b[0m"
_REFRESH_INTERVAL = 0.1  # seconds between live redraws: 10 per second at most
_SWITCH_INTERVAL = 0.001  # GIL slice while an answer is drawn on its own thread
_CODE_THEME = "monokai"


class Renderer(Protocol):
    """What the REPL and the one-shot CLI draw an answer with.

    ``begin`` starts an answer; ``thinking``/``content`` take pieces of the reasoning and of the
    answer, ``tool_call`` shows a ``name(args)`` line; ``end`` (also after Ctrl+C) flushes it
    all and leaves the cursor at the start of a fresh line. ``note`` and ``stats`` are dim lines,
    ``info`` is plain output of slash commands, ``error`` one line on stderr.
    """

    def begin(self) -> None: ...
    def thinking(self, text: str) -> None: ...
    def content(self, text: str) -> None: ...
    def tool_call(self, name: str, arguments: dict) -> None: ...
    def end(self) -> None: ...
    def note(self, text: str) -> None: ...
    def stats(self, metrics: Metrics) -> None: ...
    def info(self, text: str) -> None: ...
    def error(self, text: str) -> None: ...


def make_renderer(
    *,
    markdown: bool = True,
    wordwrap: bool = True,
    hide_thinking: bool = False,
    file: TextIO | None = None,
    force_terminal: bool | None = None,
) -> Renderer:
    """A MarkdownRenderer when ``markdown`` is on and the output is a terminal, else plain."""
    file = file or sys.stdout
    terminal = _isatty(file) if force_terminal is None else force_terminal
    if markdown and terminal:
        return MarkdownRenderer(file, hide_thinking=hide_thinking)
    return PlainRenderer(file, terminal=terminal, wordwrap=wordwrap, hide_thinking=hide_thinking)


# ---------------------------------------------------------------------------- stats


def format_stats(metrics: Metrics) -> str:
    """Ollama's ``--verbose`` block; like ollama, a field that is zero is left out."""
    m = metrics
    lines = []
    if m.total_duration > 0:
        lines.append(f"total duration:       {_duration(m.total_duration)}")
    if m.load_duration > 0:
        lines.append(f"load duration:        {_duration(m.load_duration)}")
    if m.prompt_eval_count > 0:
        lines.append(f"prompt eval count:    {m.prompt_eval_count} token(s)")
    if m.prompt_cached_count > 0:
        lines.append(f"prompt cached count:  {m.prompt_cached_count} token(s)")
    if m.prompt_eval_duration > 0:
        # The rate of the tokens actually evaluated: cached ones took no time.
        evaluated = m.prompt_eval_count - m.prompt_cached_count
        lines.append(f"prompt eval duration: {_duration(m.prompt_eval_duration)}")
        lines.append(f"prompt eval rate:     {_rate(evaluated, m.prompt_eval_duration)}")
    if m.eval_count > 0:
        lines.append(f"eval count:           {m.eval_count} token(s)")
    if m.eval_duration > 0:
        lines.append(f"eval duration:        {_duration(m.eval_duration)}")
        lines.append(f"eval rate:            {_rate(m.eval_count, m.eval_duration)}")
    return "\n".join(lines)


def _rate(count: int, ns: int) -> str:
    return f"{count / (ns / 1e9):.2f} tokens/s"


def _duration(ns: int) -> str:
    """Go's time.Duration.String(): "850µs", "12.3ms", "1.234567s", "2m3.5s"."""
    if ns <= 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _decimal(ns, 1_000) + "µs"
    if ns < 1_000_000_000:
        return _decimal(ns, 1_000_000) + "ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _decimal(rest, 1_000_000_000) + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


def _decimal(value: int, unit: int) -> str:
    # Exact integer arithmetic, trailing zeros dropped, as Go prints it.
    whole, frac = divmod(value, unit)
    digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


# ---------------------------------------------------------------------------- splitting

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")
_ITEM = re.compile(r"\s{0,3}(?:[-*+]|\d+[.)])\s")
_TABLE_DELIMITER = re.compile(r"\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*")


@dataclass(frozen=True, slots=True)
class Block:
    """A finished piece of Markdown source that renders on its own.

    ``continued`` marks a fenced code block cut for height whose code goes on in the next block,
    so a renderer can draw the two without a seam.
    """

    text: str
    gap_before: bool = False
    continued: bool = False


class BlockSplitter:
    """Cuts streamed Markdown into finished blocks and an unfinished tail.

    Only complete lines are examined, each once, so ``feed`` costs O(new text) and the result does
    not depend on how the stream was chunked. The tail is kept under about ``max_lines`` lines
    (three times that for lists, which read badly when cut mid-item). A table is never cut: two
    parts would each get a header and their own column widths, so it stays in the tail until it
    ends and ``preview`` shows its header and newest rows meanwhile.
    """

    def __init__(self, max_lines: int = 12) -> None:
        self.max_lines = max(1, max_lines)
        self._lines: list[str] = []  # complete lines of the unfinished block
        self._partial: list[str] = []  # pieces of the line still being written
        self._gap = False  # a blank line came before the unfinished block
        self._emitted = False  # nothing can have a gap before the first block
        self._fence: str | None = None  # opening line of the open code fence
        self._marker = ""  # its indent and ``` or ~~~ run, to close a part cut for height
        self._closing = re.compile("")  # a closing fence: as many of the same marker or more
        self._has_item = False  # the unfinished block contains a list item

    @property
    def tail(self) -> str:
        """The source not yet returned as a block."""
        partial = "".join(self._partial)
        self._partial = [partial] if partial else []
        return "\n".join([*self._lines, partial]) if self._lines else partial

    def preview(self) -> str:
        """What to show of the tail while it streams, of bounded size: an unfinished table's
        header and its newest rows, else the whole tail."""
        if len(self._lines) <= 2 * self.max_lines or not self._in_table():
            return self.tail
        partial = "".join(self._partial)
        self._partial = [partial] if partial else []
        return "\n".join([*self._lines[:2], *self._lines[-self.max_lines :], partial])

    def feed(self, text: str) -> list[Block]:
        """Add streamed text; return the blocks it completed."""
        out: list[Block] = []
        if "\n" not in text:
            if text:
                self._partial.append(text)
            return out
        first, *rest = text.split("\n")
        self._partial.append(first)
        self._line("".join(self._partial), out)
        for line in rest[:-1]:
            self._line(line, out)
        self._partial = [rest[-1]] if rest[-1] else []
        return out

    def finish(self) -> list[Block]:
        """The stream ended: return everything left as blocks."""
        out: list[Block] = []
        partial = "".join(self._partial)
        self._partial = []
        if partial:
            self._line(partial, out)
        self._flush(out)
        self._fence = None
        return out

    def _line(self, line: str, out: list[Block]) -> None:
        if self._fence is not None:
            self._code_line(line, out)
        elif not line.strip():
            self._flush(out)
            self._gap = True
        elif (m := _FENCE.match(line)) and not (m[1][0] == "`" and "`" in m[2]):
            self._flush(out)  # a fence may interrupt a paragraph: keep the code a block of its own
            self._fence, self._marker = line, line[: m.end(1)]
            self._closing = re.compile(rf" {{0,3}}{m[1][0]}{{{len(m[1])},}}[ \t]*")
            self._lines = [line]
        elif _HEADING.match(line):
            self._flush(out)
            self._lines = [line]
            self._flush(out)
        else:
            if len(self._lines) >= self.max_lines and self._may_cut_before(line):
                self._flush(out)
            self._has_item = self._has_item or bool(_ITEM.match(line))
            self._lines.append(line)

    def _may_cut_before(self, line: str) -> bool:
        if self._in_table():
            return False
        if _ITEM.match(line):
            return True  # a list cut before an item keeps its numbering and bullets
        if self._has_item:
            return len(self._lines) >= 3 * self.max_lines
        return True

    def _in_table(self) -> bool:
        lines = self._lines
        return len(lines) >= 2 and "|" in lines[0] and bool(_TABLE_DELIMITER.fullmatch(lines[1]))

    def _code_line(self, line: str, out: list[Block]) -> None:
        if self._closing.fullmatch(line):
            self._lines.append(line)
            self._flush(out)
            self._fence = None
        elif len(self._lines) > self.max_lines:
            # Close this part and reopen with the same info string, so highlighting carries on.
            self._emit(out, [*self._lines, self._marker], continued=True)
            self._lines = [self._fence, line]  # type: ignore[list-item]
        else:
            self._lines.append(line)

    def _flush(self, out: list[Block]) -> None:
        if self._lines:
            self._emit(out, self._lines)
            self._lines = []

    def _emit(self, out: list[Block], lines: list[str], continued: bool = False) -> None:
        out.append(Block("\n".join(lines), self._gap and self._emitted, continued))
        self._emitted, self._gap, self._has_item = True, False, False


# ---------------------------------------------------------------------------- plain text


def _isatty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


_TOKEN = re.compile(r"\n|[^\S\n]|\S+")


class _TextWriter:
    """Streams plain text to a file, wrapping at word boundaries when given a width.

    Trailing newlines are held back until more text follows, so ``end_line`` can leave exactly
    one whatever the model emitted last. With a width, the word being written is held back too,
    because whether it fits is only known once it is complete.
    """

    def __init__(self, file: TextIO, width: int | None) -> None:
        self.file, self.width = file, width
        self.column = 0
        self._word: list[str] = []
        self._newlines = 0
        self._style = ""  # escape code in effect; reset at the end of every line we finish

    def write(self, text: str, style: str = "") -> None:
        """Write ``text``; ``style`` is an escape code for it ("" for none)."""
        out: list[str] = []
        if style != self._style:
            self._flush_word(out)
            out.append((_RESET if self._style else "") + style)
            self._style = style
        for m in _TOKEN.finditer(text):
            piece = m.group()
            if piece == "\n":
                self._flush_word(out)
                self._newlines += 1
            elif piece.isspace():
                self._flush_word(out)
                self._release(out)
                if self.width is not None and self.column >= self.width:
                    out.append("\n")  # the space would begin the next line: break there instead
                    self.column = 0
                else:
                    out.append(piece)
                    self.column += 1
            else:
                self._word.append(piece)
                if self.width is None or sum(map(len, self._word)) >= self.width:
                    self._flush_word(out)
        self._put(out)

    def end_line(self) -> None:
        """Finish the current line; the cursor ends at the start of a line, style reset."""
        out: list[str] = []
        self._flush_word(out)
        self._newlines = 0
        if self._style:
            out.append(_RESET)
            self._style = ""
        if self.column:
            out.append("\n")
            self.column = 0
        self._put(out)

    def blank_line(self) -> None:
        """Write an empty line now (not held back)."""
        self.end_line()
        self._put(["\n"])

    def _release(self, out: list[str]) -> None:
        if self._newlines:
            out.append("\n" * self._newlines)
            self._newlines, self.column = 0, 0

    def _flush_word(self, out: list[str]) -> None:
        if not self._word:
            return
        word = "".join(self._word)
        self._word = []
        self._release(out)
        if self.width is not None and self.column and self.column + len(word) > self.width:
            out.append("\n")
            self.column = 0
        out.append(word)
        self.column += len(word)
        if self.width is not None and self.column > self.width:
            # The terminal itself wrapped a word longer than a line; where did it leave us?
            self.column -= self.width * ((self.column - 1) // self.width)

    def _put(self, out: list[str]) -> None:
        text = "".join(out)
        if text:
            self.file.write(text)
            self.file.flush()


class PlainRenderer:
    """Writes the answer as received: no escape codes unless the output is a terminal."""

    def __init__(
        self, file: TextIO | None = None, *, terminal: bool = False, wordwrap: bool = True,
        hide_thinking: bool = False, width: int | None = None,
    ) -> None:
        self.file = file or sys.stdout
        self.terminal, self.wordwrap, self.hide_thinking = terminal, wordwrap, hide_thinking
        self._fixed_width = width
        self._color = terminal and not _no_color()
        self._writer = _TextWriter(self.file, None)
        self._mode: str | None = None  # "thinking" or "answer"

    def _width(self) -> int | None:
        if not (self.terminal and self.wordwrap):
            return None
        return self._fixed_width or shutil.get_terminal_size().columns

    def _style(self, code: str) -> str:
        return code if self._color else ""

    def begin(self) -> None:
        """An answer starts; re-read the width in case the terminal was resized."""
        self.end()
        self._writer = _TextWriter(self.file, self._width())

    def thinking(self, text: str) -> None:
        if self.hide_thinking:
            return
        if self._mode != "thinking":
            self._close()
            self._mode = "thinking"
            self._writer.write("Thinking...\n", self._style(_DIM))
        self._writer.write(text, self._style(_DIM))

    def content(self, text: str) -> None:
        if self._mode != "answer":
            self._close()
            self._mode = "answer"
        self._writer.write(text)

    def tool_call(self, name: str, arguments: dict) -> None:
        self._line(f"→ {name}({json.dumps(arguments, ensure_ascii=False)})", _DIM)

    def end(self) -> None:
        self._close()
        self._writer.end_line()

    def note(self, text: str) -> None:
        self._line(text, _DIM)

    def stats(self, metrics: Metrics) -> None:
        self._line(format_stats(metrics), _DIM)

    def info(self, text: str) -> None:
        self._line(text, "")

    def error(self, text: str) -> None:
        self.end()  # stdout and stderr are often the same terminal
        red = self._color and _isatty(sys.stderr)
        sys.stderr.write(f"{_RED}{text}{_RESET}\n" if red else f"{text}\n")
        sys.stderr.flush()

    def _line(self, text: str, style: str) -> None:
        self._close()
        self._writer.end_line()
        self._writer.write(text, self._style(style))
        self._writer.end_line()

    def _close(self) -> None:
        if self._mode == "thinking":
            # What ollama prints, and the blank line it leaves before the answer.
            self._writer.end_line()
            self._writer.write("...done thinking.", self._style(_DIM))
            self._writer.blank_line()
        self._mode = None


# ---------------------------------------------------------------------------- markdown

_WRAP_MARK = "↪ "  # starts each row a long code line continues on


def _markdown(source: str) -> Any:
    """rich's Markdown with two elements of ours: ordered items numbered "1." (rich prints
    "1"), and code blocks whose long lines wrap under a marker instead of at column 0.

    The live tail is re-rendered up to ten times a second, so the classes and the markdown-it
    parser (which rich would build anew for every document) are made once."""
    doc_class, template, parser = _markdown_kit()
    doc = doc_class.__new__(doc_class)
    doc.__dict__.update(template.__dict__)
    doc.markup, doc.parsed = source, parser.parse(source)
    return doc


@functools.cache
def _markdown_kit() -> tuple[Any, Any, Any]:
    from markdown_it import MarkdownIt
    from rich.markdown import CodeBlock, ListItem, Markdown
    from rich.segment import Segment
    from rich.syntax import Syntax

    class NumberedItem(ListItem):
        def render_number(self, console, options, number, last_number):
            width = len(str(last_number)) + 3
            lines = console.render_lines(
                self.elements, options.update(width=options.max_width - width), style=self.style
            )
            style = console.get_style("markdown.item.number", default="none")
            for i, line in enumerate(lines):
                yield Segment(f"{number}.".rjust(width - 1) + " " if i == 0 else " " * width, style)
                yield from line
                yield Segment("\n")

    class WrappedCode(CodeBlock):
        def __rich_console__(self, console, options):
            code = str(self.text).rstrip()
            background = Syntax.get_theme(self.theme).get_background_style()
            inner = max(4, options.max_width - 2)  # one column of padding each side
            longest = max((len(line.expandtabs(4)) for line in code.split("\n")), default=0)
            syntax = Syntax(code, self.lexer_name, theme=self.theme, word_wrap=False)
            rows = console.render_lines(
                syntax, options.update(width=max(inner, longest + 1)), pad=False
            )
            pad, new_line = Segment(" ", background), Segment("\n")
            blank = [Segment(" " * options.max_width, background), new_line]
            yield from blank
            for row in rows:
                length = len("".join(seg.text for seg in row).rstrip())
                first = True
                while first or length > 0:
                    room = inner if first else inner - len(_WRAP_MARK)
                    total = sum(seg.cell_length for seg in row)
                    if total > room:
                        part, row = (list(p) for p in Segment.divide(row, [room, total]))
                    else:
                        part, row = row, []
                    mark = [] if first else [Segment(_WRAP_MARK, background + _dim_style())]
                    used = sum(seg.cell_length for seg in part) + (0 if first else len(_WRAP_MARK))
                    yield pad
                    yield from mark
                    yield from part
                    yield Segment(" " * max(0, inner - used), background)
                    yield pad
                    yield new_line
                    length -= room
                    first = False
            yield from blank

    class Doc(Markdown):
        elements = {**Markdown.elements, "list_item_open": NumberedItem, "fence": WrappedCode,
                    "code_block": WrappedCode}

    template = Doc("", code_theme=_CODE_THEME, hyperlinks=False)
    return Doc, template, MarkdownIt().enable("strikethrough").enable("table")


_warmed = threading.Event()


def _warm_up() -> None:
    """Import and exercise the Markdown and highlighting machinery on a side thread, once per
    process, while the model loads: otherwise the first answer pays ~0.15 s of imports
    (markdown-it, pygments and its Python lexer) in the middle of its first tokens."""
    if _warmed.is_set():
        return
    _warmed.set()

    def run() -> None:
        import io

        from rich.console import Console

        try:
            sample = "Warm **up**\n\n- item\n\n```python\nx = 1\n```\n"
            Console(file=io.StringIO(), force_terminal=True, width=40).print(_markdown(sample))
        except Exception:  # only a head start: the real render reports any real problem
            pass

    threading.Thread(target=run, name="chatcli-warm-up", daemon=True).start()


def _dim_style() -> Any:
    from rich.style import Style

    return Style(dim=True)


@dataclass
class _Rendered:
    """Markdown source drawn without rich's stray blank lines at either end.

    rich puts a blank line before a list or table that starts a document; blocks drawn one by
    one must not, or a list cut in two would show a gap. ``drop_top``/``drop_bottom`` remove the
    padding row of a code block at a cut; ``last`` keeps only that many rows (the live tail
    follows the newest text).
    """

    source: str
    drop_top: bool = False
    drop_bottom: bool = False
    last: int | None = None

    def lines(self, console: Console, options: ConsoleOptions) -> list[list[Any]]:
        """The rendered rows, each a list of segments without its newline."""
        if not self.source.strip():
            return []
        lines = console.render_lines(_markdown(self.source), options, pad=False)
        while lines and _blank(lines[0]):
            lines.pop(0)
        while lines and _blank(lines[-1]):
            lines.pop()
        lines = lines[1 if self.drop_top else 0 : len(lines) - 1 if self.drop_bottom else None]
        return lines[-self.last :] if self.last else lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.segment import Segment

        for line in self.lines(console, options):
            yield from line
            yield Segment.line()


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl+C back while the screen is written, then raise it.

    An interrupt in the middle of a redraw would leave the screen and our idea of it apart,
    and the ``end()`` that follows would duplicate or erase lines.
    """
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(handler):
        yield
        return
    caught: list[Any] = []
    signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if caught:
            handler(*caught[0])


def _blank(line: list[Any]) -> bool:
    # A code block's padding rows are spaces too, but on a background: those are kept.
    return all(not seg.text.strip() and not (seg.style and seg.style.bgcolor) for seg in line)


_TRAILING_SPACES = re.compile(r" +((?:\x1b\[[0-9;]*m)*)(?=\n|$)")
_HIDE_CURSOR, _SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
# Erasing from the cursor to the end of the screen without a plain ED (ESC [ J) at the top-left
# corner: tmux (scroll-on-clear, on by default) takes that for "clear the screen" and first
# pushes the whole screen into the scrollback, so whatever was on it appears there twice. The
# row is erased with EL, the rest with ED from one column further right.
ERASE_DOWN = "\x1b[K\x1b7\x1b[C\x1b[J\x1b8"  # from the cursor, which stays where it is
_CLEAR_BELOW = "\r\x1b[K\x1b[C\x1b[J\r"  # from the start of the cursor's row


class MarkdownRenderer(PlainRenderer):
    """Streams the answer as Markdown with highlighted code; everything else as PlainRenderer.

    Finished blocks are printed once; the unfinished tail is drawn below them and redrawn in
    place. Between redraws the cursor rests at the *top left* of that tail, not below it: a
    terminal that reflows lines on resize keeps the cursor on the same text, so erasing from
    the cursor down removes the whole tail however the resize rewrapped it (counting rows up
    from the bottom, as rich's Live does, leaves the top of the old tail behind: lines twice).
    """

    def __init__(
        self, file: TextIO | None = None, *, hide_thinking: bool = False, threaded: bool = True,
    ) -> None:
        from rich.console import Console

        super().__init__(file, terminal=True, hide_thinking=hide_thinking)
        self.console = Console(
            file=self.file, force_terminal=True, no_color=_no_color(), highlight=False,
            soft_wrap=False,
        )
        self._splitter = BlockSplitter()
        self._printed = False  # a block of this answer is on screen (gaps go between blocks)
        self._seam = False  # the last block printed is a code block that goes on in the tail
        self._last_refresh = 0.0
        self._threaded = threaded
        self._painter: _Painter | None = None
        _warm_up()

    def content(self, text: str) -> None:
        if self._mode != "answer":
            self._close()
            self._start_answer()
        if self._painter is not None:
            self._painter.add(text)
        else:
            self._show(self._splitter.feed(text))

    def _start_answer(self) -> None:
        self._splitter = BlockSplitter(max(4, self.console.height // 2))
        self._printed = self._seam = False
        self._last_refresh = 0.0
        self._mode = "answer"
        self._write(_HIDE_CURSOR)
        if self._threaded:
            self._painter = _Painter(self._paint)

    def _paint(self, text: str) -> None:
        """One refresh, on the painter thread: everything that arrived since the last one."""
        self._show(self._splitter.feed(text), final=False, throttle=False)

    def _show(self, blocks: list[Block], final: bool = False, throttle: bool = True) -> None:
        from rich.console import Group
        from rich.text import Text

        items: list[Any] = []
        for block in blocks:
            if block.gap_before and self._printed:
                items.append(Text(""))
            items.append(_Rendered(block.text, drop_top=self._seam, drop_bottom=block.continued))
            self._printed, self._seam = True, block.continued
        now = time.monotonic()
        if throttle and not items and not final and now - self._last_refresh < _REFRESH_INTERVAL:
            return
        self._last_refresh = now
        out = [_CLEAR_BELOW]
        if items:
            out.append(self._ansi(Group(*items)))
        if not final:
            out.append(self._tail())
        with _ctrl_c_deferred():
            self._write("".join(out))

    def _tail(self) -> str:
        """The tail drawn from the cursor down, the cursor then put back at its top left."""
        # A third of the screen: a terminal that rewraps it on a resize to a narrower window
        # must still fit it below the cursor, or the tail's top goes into the scrollback.
        height = max(1, self.console.height // 3)
        tail = _Rendered(self._splitter.preview(), drop_top=self._seam, last=height)
        lines = tail.lines(self.console, self.console.options)
        if not lines:
            return ""
        text = self._ansi(_Lines(lines))
        up = len(lines) - 1
        return text + "\r" + (f"\x1b[{up}A" if up else "")

    def _ansi(self, renderable: Any) -> str:
        with self.console.capture() as capture:
            self.console.print(renderable, end="")
        # Rows end in erase-to-end-of-line instead of the spaces rich pads them with (a code
        # block's background reaches the edge all the same: terminals erase with the current
        # background). A row of padding as wide as the window would become two rows when a
        # terminal that rewraps on resize is made narrower, leaving stray rows behind.
        return _TRAILING_SPACES.sub("\x1b[K\\1", capture.get())

    def _write(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()

    def _close(self) -> None:
        if self._mode != "answer":
            super()._close()
            return
        self._mode = None
        painter, self._painter = self._painter, None
        try:
            if painter is not None:
                painter.stop()  # paints what is left, then hands the screen back
            self._show(self._splitter.finish(), final=True)
        finally:
            # The cursor is on a fresh line; erase whatever the terminal echoed there ("^C").
            with _ctrl_c_deferred():
                self._write(_CLEAR_BELOW + _SHOW_CURSOR)


class _Painter:
    """The thread that draws a streaming answer, so that decoding never waits for the terminal.

    ``add`` (the decode loop's side) only appends the new text to a list. The thread takes
    everything that arrived, hands it to ``paint`` in one piece, then rests until the next
    refresh is due: at most one redraw per ``_REFRESH_INTERVAL``, each costing the new text
    plus a screen-bounded tail, however long the answer is. While it draws it holds the GIL in
    short slices (the switch interval is lowered for the answer's length), so the decode loop
    gets it back quickly when llama.cpp returns.
    """

    def __init__(self, paint: Any) -> None:
        self._paint = paint
        self._pending: list[str] = []
        self._cond = threading.Condition()
        self._idle = True  # waiting for text: the next ``add`` wakes it
        self._stopping = False
        self._failure: BaseException | None = None
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, _SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._run, name="chatcli-render", daemon=True)
        self._thread.start()

    def add(self, text: str) -> None:
        with self._cond:
            self._pending.append(text)
            if self._idle:
                self._cond.notify()

    def stop(self) -> None:
        """Paint what is left and end the thread; a failure on the thread is raised here."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        sys.setswitchinterval(self._switch)
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._idle = True
                    while not self._pending and not self._stopping:
                        self._cond.wait()
                    self._idle = False
                    text = "".join(self._pending)
                    self._pending.clear()
                    stopping = self._stopping
                if text:
                    self._paint(text)
                if stopping:
                    return
                due = time.monotonic() + _REFRESH_INTERVAL
                with self._cond:
                    while not self._stopping and (left := due - time.monotonic()) > 0:
                        self._cond.wait(left)
        except BaseException as exc:  # handed to the thread that stops the painter
            self._failure = exc


@dataclass
class _Lines:
    """Rendered rows joined by newlines, with none after the last."""

    rows: list[list[Any]]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.segment import Segment

        for i, row in enumerate(self.rows):
            if i:
                yield Segment.line()
            yield from row
