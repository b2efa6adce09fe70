"""Keys typed while the REPL is busy wait, unechoed and unaltered, for the next prompt.

In the terminal's normal (cooked) mode, keys typed during an answer are echoed over it and
the Enter key's CR is turned into LF, which the prompt reads as "insert a newline". While
``held_keys()`` is active the terminal neither echoes nor edits what is typed (no ECHO, no
ICANON, no ICRNL), so the bytes wait in the terminal's input queue exactly as typed, and the
next prompt (prompt-toolkit) reads them as keys: ``question<Enter>`` typed ahead is sent, as in
a shell. With ``signals`` (the default) ISIG stays on: Ctrl+C still raises SIGINT and stops the
answer. Without it, Ctrl+C is the byte \x03 in the queue, read later as a key: the REPL uses
that mode around the prompt, whose own raw mode ends a few milliseconds before ``prompt()``
returns, while prompt-toolkit's SIGINT handling would drop the signal (see ``repl.loop``).
Every mode change is TCSANOW: nothing typed is ever discarded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


@contextmanager
def held_keys(stream: IO | None = None, *, signals: bool = True) -> Iterator[None]:
    """During the block, hold typed keys for the next prompt (only when ``stream``, stdin by
    default, is a terminal); Ctrl+C is SIGINT with ``signals``, else a byte held like the
    others. The terminal's previous mode is restored afterwards, also on errors; TCSANOW, so
    that nothing typed is discarded."""
    try:
        import termios
    except ImportError:  # not a POSIX system
        yield
        return
    try:
        fd = (stream or sys.stdin).fileno()
        before = termios.tcgetattr(fd)
    except (termios.error, AttributeError, ValueError, OSError):  # not a terminal, or closed
        yield
        return
    held = termios.tcgetattr(fd)
    held[0] &= ~termios.ICRNL  # iflag: keep Enter as CR
    held[3] &= ~(termios.ECHO | termios.ICANON)  # lflag: no echo, bytes readable as typed
    if signals:
        held[3] |= termios.ISIG  # Ctrl+C stays SIGINT
    else:
        held[3] &= ~termios.ISIG  # Ctrl+C is the byte \x03, read with the other keys
    held[6][termios.VMIN] = 1
    held[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, held)
    try:
        yield
    finally:
        try:
            termios.tcsetattr(fd, termios.TCSANOW, before)
        except termios.error:
            pass  # the terminal went away
