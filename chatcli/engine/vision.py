"""Images through a vision projector (mmproj), with llama.cpp's multimodal (mtmd) library.

The prompt text carries one media marker per image; mtmd splits it into text and image chunks,
encodes the images with the projector and evaluates everything into the context. The engine
then samples as usual.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from chatcli.core.errors import ModelLoadError, RequestError

MARKER = "<__media__>"  # mtmd's default media marker


class Vision:
    def __init__(self, projector: Path, model, n_threads: int) -> None:
        from chatcli.engine import binding

        self.m = mtmd_cpp = binding.mtmd()
        params = mtmd_cpp.mtmd_context_params_default()
        params.n_threads = n_threads
        params.print_timings = False
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(projector).encode(), model, params)
        if not self.ctx:
            raise ModelLoadError(f"cannot load the vision projector {projector}")
        self.marker = mtmd_cpp.mtmd_default_marker().decode()

    def eval(self, lctx, prompt: str, images: list[bytes], n_batch: int) -> int:
        """Evaluate ``prompt`` (with one marker per image) from position 0; returns n_past."""
        m = self.m
        bitmaps = []
        try:
            for data in images:
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                bitmap = m.mtmd_helper_bitmap_init_from_buf(self.ctx, buf, len(data), False)
                if not bitmap:
                    raise RequestError("the vision projector could not decode an image")
                bitmaps.append(bitmap)
            chunks = m.mtmd_input_chunks_init()
            text = prompt.encode()
            inp = m.mtmd_input_text(text, len(text), False, True)
            array = (m.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            if m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), array, len(bitmaps)) != 0:
                raise RequestError("the number of images does not match the prompt's markers")
            new_n_past = m.llama_cpp.llama_pos(0)
            if m.mtmd_helper_eval_chunks(self.ctx, lctx, chunks, 0, 0, n_batch, True,
                                         ctypes.byref(new_n_past)) != 0:
                raise RequestError("llama.cpp failed to evaluate the images")
            m.mtmd_input_chunks_free(chunks)
            return int(new_n_past.value)
        finally:
            for bitmap in bitmaps:
                m.mtmd_bitmap_free(bitmap)

    def close(self) -> None:
        if self.ctx:
            self.m.mtmd_free(self.ctx)
            self.ctx = None
