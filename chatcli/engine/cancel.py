"""A cancel flag that llama.cpp can poll from C.

llama.cpp asks its abort callback, between graph nodes, whether to stop. A Python callback
there costs a trip into the interpreter per node (measurable in prompt evaluation). This flag
keeps one byte in C memory and hands llama.cpp libc's ``strlen`` as the callback: on a buffer
that is either "" or "\\x01", strlen returns 0 or 1, i.e. false or true, without Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading


class CancelFlag(threading.Event):
    """A threading.Event whose state is also readable from C (``address``)."""

    def __init__(self) -> None:
        super().__init__()
        self._byte = ctypes.create_string_buffer(2)  # b"\0\0": strlen == 0

    def set(self) -> None:
        self._byte[0] = b"\x01"  # before waking waiters: C sees it at its next poll
        super().set()

    def clear(self) -> None:
        self._byte[0] = b"\x00"
        super().clear()

    @property
    def address(self) -> int:
        return ctypes.addressof(self._byte)


def _find_strlen():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        return ctypes.cast(libc.strlen, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


STRLEN = _find_strlen()  # None where there is no C library to borrow it from


def abort_callback(lc, cancel: threading.Event):
    """The (callback, data) pair for llama_set_abort_callback: C-only when possible."""
    if STRLEN is not None and isinstance(cancel, CancelFlag):
        return lc.ggml_abort_callback(STRLEN), ctypes.c_void_p(cancel.address)
    return lc.ggml_abort_callback(lambda _data: cancel.is_set()), None
