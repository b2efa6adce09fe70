"""`chat` for the end-to-end benchmark: the end-of-generation check is disabled (so an answer
runs to --num-predict), and the time of the first answer text and of the end of rendering are
written to $BENCH_TIMING_FILE.

    python -m bench.child_chat run MODEL ...
"""

import atexit
import json
import os
import time

from chatcli.repl import render

from .common import never_eog

never_eog().__enter__()  # stays on for the life of this process
marks: dict[str, float] = {}


def _timed(cls) -> None:
    """Mark the first answer text handed to the renderer and the end of its drawing."""
    content, end = cls.content, cls.end

    def timed_content(self, text):
        marks.setdefault("first", time.perf_counter())
        return content(self, text)

    def timed_end(self):
        result = end(self)
        marks["end"] = time.perf_counter()
        return result

    cls.content, cls.end = timed_content, timed_end


_timed(render.MarkdownRenderer)
_timed(render.PlainRenderer)


@atexit.register
def _write() -> None:
    path = os.environ.get("BENCH_TIMING_FILE")
    if path:
        with open(path, "w") as f:
            json.dump(marks, f)


from chatcli.cli.app import main  # noqa: E402

main()
