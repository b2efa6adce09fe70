"""Images in messages: loading, validation, the projector requirement, markers, the REPL.

No vision GGUF can be downloaded here and a working random-weight CLIP projector is beyond the
`gguf` package's reach, so the multimodal path is tested up to llama.cpp's mtmd handler: a
non-projector file given as the projector is refused by mtmd itself, cleanly.
"""

import base64
import struct
import subprocess
import sys
import zlib

import pytest

from chatcli import chat
from chatcli.client.inputs import find_images
from chatcli.core.errors import NotSupportedError, RequestError
from chatcli.core.images import load_image
from chatcli.engine.decode import Engine
from chatcli.engine.vision import MARKER


def png(w: int = 4, h: int = 4) -> bytes:
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * w for _ in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_images_from_path_bytes_and_base64(tmp_path):
    data = png()
    path = tmp_path / "red.png"
    path.write_bytes(data)
    b64 = base64.b64encode(data).decode()
    assert load_image(str(path)) == load_image(data) == load_image(b64) == data
    assert load_image("data:image/png;base64," + b64) == data


@pytest.mark.parametrize("bad, fragment", [
    ("https://example.com/cat.png", "never fetches URLs"),
    ("file:///etc/passwd", "never fetches URLs"),
    ("not base64 !!", "neither a file nor base64"),
    (base64.b64encode(b"plain text, not an image").decode(), "not a PNG"),
    (12, "must be a path"),
])
def test_bad_images(bad, fragment):
    with pytest.raises(RequestError, match=fragment):
        load_image(bad)


def test_model_without_projector_refuses_images():
    with pytest.raises(NotSupportedError, match="smollm2:135m.*does not support images"):
        chat("smollm2:135m", [{"role": "user", "content": "what is this?", "images": [png()]}])


def test_markers_go_before_the_text(tiny_gguf, tmp_path):
    eng = Engine(tiny_gguf, projector=tmp_path / "unused.gguf")
    try:
        messages = [{"role": "user", "content": "what?", "images": [png(), png()]}]
        images = eng._attach_images(messages)
        assert len(images) == 2
        assert messages == [{"role": "user", "content": MARKER * 2 + "\nwhat?"}]
    finally:
        eng.close()


def test_a_different_projector_gets_an_engine_of_its_own(tiny_gguf, tmp_path):
    from chatcli.engine.loaded import CACHE
    from chatcli.models.resolve import ResolvedModel

    first_mmproj, second_mmproj = tmp_path / "first-mmproj.gguf", tmp_path / "second-mmproj.gguf"
    entries = [CACHE.acquire(ResolvedModel("tiny", tiny_gguf, projector=projector), {})
               for projector in (first_mmproj, second_mmproj, None, first_mmproj)]
    try:
        first, second, plain, again = entries
        assert first.engine.projector == first_mmproj
        assert second.engine.projector == second_mmproj  # not silently the first one's
        assert plain.engine.projector is None
        assert again is first and len({id(first), id(second), id(plain)}) == 3
        with pytest.raises(AttributeError):  # an engine's projector is never swapped under it
            first.engine.projector = second_mmproj
    finally:
        for entry in entries:
            CACHE.release(entry, 0)
    assert not [e for e in CACHE.loaded() if e.model.path == tiny_gguf]


def test_a_file_that_is_not_a_projector_is_refused_by_mtmd(tiny_gguf, tmp_path):
    # In a subprocess: whatever llama.cpp's multimodal loader does, the test runner survives.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from chatcli.engine.decode import Engine\n"
        "from chatcli.core.errors import ModelLoadError\n"
        f"eng = Engine(Path({str(tiny_gguf)!r}), projector=Path({str(tiny_gguf)!r}))\n"
        "try:\n"
        f"    list(eng.chat([{{'role': 'user', 'content': 'hi', 'images': [{png()!r}]}}]))\n"
        "except ModelLoadError as e:\n"
        "    print('REFUSED', e)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-1000:]
    assert "REFUSED cannot load the vision projector" in p.stdout
    assert "clip_model_loader" not in p.stderr  # mtmd's log is quiet


def test_repl_attaches_image_paths(tmp_path):
    img = tmp_path / "photo.png"
    img.write_bytes(png())
    text, paths = find_images(f"what is in {img} ?")
    assert paths == [str(img)] and text == "what is in ?"
    text, paths = find_images("a file called missing.png")
    assert paths == [] and text == "a file called missing.png"


def test_cli_mmproj_must_exist(cli_env, tmp_path):
    p = subprocess.run([sys.executable, "-m", "chatcli", "run", "smollm2:135m", "--mmproj",
                        str(tmp_path / "nope.gguf"), "hi"], env=cli_env, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 1 and "no such projector file" in p.stderr


def test_network_images_are_never_read_from_paths(tmp_path):
    from chatcli.core.images import decode_base64_image

    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    with pytest.raises(RequestError, match="base64"):
        decode_base64_image(str(secret))
    with pytest.raises(RequestError, match="base64"):
        decode_base64_image("data:image/png;base64," + str(secret))
    assert decode_base64_image(base64.b64encode(png()).decode()) == png()
