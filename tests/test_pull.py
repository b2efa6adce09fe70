"""Pulling from a registry and from Hugging Face, against a local server speaking both protocols.

Most tests pull the tiny GGUF (or random bytes, where only the transfer matters); one pulls the
real bundled model over loopback and chats with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from registry_server import RegistryServer, digest_of

from chatcli.core.names import InvalidNameError, ModelName
from chatcli.models.pull import HfFile, PullError, choose_hf_model, pull
from chatcli.models.resolve import resolve
from chatcli.models.store import MEDIA, local_store

MODEL = MEDIA + "model"
PARAMS = {"temperature": 0.1, "stop": ["<x>"]}


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with RegistryServer() as server:
        yield server


@pytest.fixture
def cdn():
    with RegistryServer() as server:
        yield server


def add_tiny(registry: RegistryServer, tiny_gguf: Path, model: str = "tiny") -> dict:
    return registry.add_model("library", model, "latest", [
        (MODEL, tiny_gguf),
        (MEDIA + "params", json.dumps(PARAMS).encode()),
        (MEDIA + "system", b"You are tiny."),
        (MEDIA + "license", b"Tiny License 1.0"),
        (MEDIA + "template", b"{{ .Prompt }}"),
    ])


def hexes(manifest: dict) -> list[str]:
    layers = manifest["layers"] + ([manifest["config"]] if "config" in manifest else [])
    return [layer["digest"].removeprefix("sha256:") for layer in layers]


def leftovers(home: Path) -> list[str]:
    blobs = home / "models" / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


def test_pull_registers_every_layer_and_reports_progress_like_ollama(
    registry, tiny_gguf, chatcli_home
):
    manifest = add_tiny(registry, tiny_gguf)
    events: list[dict] = []
    name = pull(f"{registry.host}/library/tiny", insecure=True, on_progress=events.append)

    assert name == ModelName(registry.host, "library", "tiny", "latest")
    blobs = chatcli_home / "models" / "blobs"
    for h in hexes(manifest):
        assert (blobs / f"sha256-{h}").is_file()
    assert not [n for n in leftovers(chatcli_home) if n.endswith("-partial")]
    assert (chatcli_home / "models" / "manifests" / registry.host / "library" / "tiny"
            / "latest").is_file()

    resolved = resolve(f"{registry.host}/library/tiny")
    assert resolved.path == blobs / f"sha256-{hexes(manifest)[0]}"
    assert resolved.path.read_bytes() == tiny_gguf.read_bytes()
    assert resolved.options == PARAMS
    assert resolved.system == "You are tiny."
    assert resolved.license == "Tiny License 1.0"
    assert resolved.template == "{{ .Prompt }}"

    assert events[0] == {"status": "pulling manifest"}
    assert events[-3:] == [{"status": "verifying sha256 digest"},
                           {"status": "writing manifest"}, {"status": "success"}]
    layer_events = events[1:-3]
    sizes = {x["digest"]: x["size"] for x in manifest["layers"] + [manifest["config"]]}
    assert {e["digest"] for e in layer_events} == set(sizes)
    for e in layer_events:
        assert set(e) == {"status", "digest", "total", "completed"}
        assert e["status"] == "pulling " + e["digest"].removeprefix("sha256:")[:12]
        assert e["total"] == sizes[e["digest"]]
    for digest, size in sizes.items():
        done = [e["completed"] for e in layer_events if e["digest"] == digest]
        assert done == sorted(done) and done[-1] == size


def test_blobs_follow_redirects_to_another_host(registry, cdn, tiny_gguf):
    manifest = add_tiny(registry, tiny_gguf)
    registry.redirect_blobs_to = cdn
    pull(f"{registry.host}/library/tiny", insecure=True)
    assert sorted(cdn.paths()) == sorted(f"/cdn/sha256-{h}" for h in hexes(manifest))
    assert resolve(f"{registry.host}/library/tiny").path.read_bytes() == tiny_gguf.read_bytes()


def test_redirects_to_other_schemes_are_refused(registry, tiny_gguf, chatcli_home):
    add_tiny(registry, tiny_gguf)
    registry.redirect_blobs_to = SimpleNamespace(url="file://", blobs={}, corrupt=set())
    with pytest.raises(PullError, match="refusing to download from file://"):
        pull(f"{registry.host}/library/tiny", insecure=True)
    assert not (chatcli_home / "models" / "manifests").exists()


def test_an_interrupted_download_resumes_with_a_range_request(registry, chatcli_home):
    payload = os.urandom(3 << 20)
    manifest = registry.add_model("library", "big", "latest", [(MODEL, payload)])
    digest = manifest["layers"][0]["digest"]
    half = len(payload) // 2
    registry.cut_next_blob_after = half

    with pytest.raises(PullError, match="pull again to resume") as err:
        pull(f"{registry.host}/library/big", insecure=True)
    assert "\n" not in str(err.value)
    partial = local_store().partial_path(digest)
    assert partial.stat().st_size == half
    assert local_store().read_manifest(ModelName(registry.host, "library", "big", "latest")) \
        is None

    first = len(registry.log)
    pull(f"{registry.host}/library/big", insecure=True)
    resumed = [r for r in registry.log[first:] if r.path.endswith(digest)]
    assert [r.range for r in resumed] == [f"bytes={half}-"]
    assert registry.blob_bytes_sent < 1.3 * len(payload)
    assert resolve(f"{registry.host}/library/big").path.read_bytes() == payload
    assert not partial.exists()


def test_a_server_ignoring_range_gets_the_blob_over_from_the_start(registry, chatcli_home):
    payload = os.urandom(1 << 20)
    manifest = registry.add_model("library", "big", "latest", [(MODEL, payload)], config=None)
    partial = local_store().partial_path(manifest["layers"][0]["digest"])
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"junk" * 1000)
    registry.ignore_range = True
    pull(f"{registry.host}/library/big", insecure=True)
    assert registry.blob_requests()[0].range == "bytes=4000-"
    assert resolve(f"{registry.host}/library/big").path.read_bytes() == payload


def test_a_bad_partial_costs_one_failed_pull_then_heals(registry, chatcli_home):
    payload = os.urandom(1 << 20)
    manifest = registry.add_model("library", "big", "latest", [(MODEL, payload)], config=None)
    partial = local_store().partial_path(manifest["layers"][0]["digest"])
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"junk" * 1000)
    with pytest.raises(PullError, match="digest mismatch"):
        pull(f"{registry.host}/library/big", insecure=True)
    assert not partial.exists()
    partial.write_bytes(b"x" * (len(payload) + 5))  # longer than the blob: ignored
    pull(f"{registry.host}/library/big", insecure=True)
    assert resolve(f"{registry.host}/library/big").path.read_bytes() == payload


def test_a_digest_mismatch_registers_nothing_and_keeps_nothing(registry, tiny_gguf, chatcli_home):
    manifest = add_tiny(registry, tiny_gguf)
    bad = manifest["layers"][0]["digest"]
    registry.corrupt_blob(bad)
    with pytest.raises(PullError, match="digest mismatch") as err:
        pull(f"{registry.host}/library/tiny", insecure=True)
    assert "\n" not in str(err.value)
    assert not (chatcli_home / "models" / "manifests").exists()
    names = leftovers(chatcli_home)
    assert not [n for n in names if n.endswith("-partial")]
    assert f"sha256-{bad.removeprefix('sha256:')}" not in names


def test_a_body_larger_than_declared_is_refused(registry, tiny_gguf, chatcli_home):
    digest, size = registry.add_blob(tiny_gguf.read_bytes())
    body = {"schemaVersion": 2, "layers": [
        {"mediaType": MODEL, "digest": digest, "size": size - 100}]}
    registry.raw_manifest("library", "liar", "latest", json.dumps(body).encode())
    with pytest.raises(PullError, match="refusing"):
        pull(f"{registry.host}/library/liar", insecure=True)
    assert leftovers(chatcli_home) == []


def test_an_unknown_model_is_named_in_the_error(registry):
    with pytest.raises(PullError, match=r"model '127\.0\.0\.1:\d+/library/nope:latest' not found"):
        pull(f"{registry.host}/library/nope", insecure=True)


def test_a_manifest_that_is_not_json_is_a_clear_error(registry, chatcli_home):
    registry.raw_manifest("library", "bad", "latest", b"<html>surprise</html>")
    with pytest.raises(PullError, match="not a valid model manifest"):
        pull(f"{registry.host}/library/bad", insecure=True)
    assert leftovers(chatcli_home) == []


def test_a_manifest_digest_cannot_escape_the_store(registry, chatcli_home, tmp_path_factory):
    body = {"schemaVersion": 2, "layers": [
        {"mediaType": MODEL, "digest": "sha256:../../../etc/passwd", "size": 10}]}
    registry.raw_manifest("library", "evil", "latest", json.dumps(body).encode())
    with pytest.raises(PullError, match="invalid digest"):
        pull(f"{registry.host}/library/evil", insecure=True)
    assert registry.paths() == ["/v2/library/evil/manifests/latest"]
    assert not (chatcli_home / "models").exists()
    assert list(tmp_path_factory.getbasetemp().rglob("passwd*")) == []


@pytest.mark.parametrize("bad", ["../evil", "{host}/../evil", "a/b/c/d/e", "x:..",
                                 "{host}/library/x:..", "{host}/library/.hidden", ""])
def test_bad_names_are_rejected_before_any_request(registry, bad):
    with pytest.raises(InvalidNameError):
        pull(bad.format(host=registry.host), insecure=True)
    assert registry.log == []


def test_plain_http_needs_insecure(registry, tiny_gguf, chatcli_home):
    add_tiny(registry, tiny_gguf)
    start = time.monotonic()
    with pytest.raises(PullError, match="--insecure"):
        pull(f"{registry.host}/library/tiny")
    assert time.monotonic() - start < 10
    assert leftovers(chatcli_home) == []


def test_an_unreachable_host_is_named(registry):
    registry.stop()
    with pytest.raises(PullError, match=rf"cannot reach {registry.host}"):
        pull(f"{registry.host}/library/tiny", insecure=True)


def test_ctrl_c_keeps_the_partial_and_the_next_pull_resumes(registry):
    payload = os.urandom(4 << 20)
    manifest = registry.add_model("library", "big", "latest", [(MODEL, payload)])
    digest = manifest["layers"][0]["digest"]
    registry.chunk_delay = 0.005  # ~0.3 s for the blob: several progress events
    seen: list[int] = []

    def interrupt(event: dict) -> None:
        if event.get("digest") == digest:
            seen.append(event["completed"])
            if len(seen) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull(f"{registry.host}/library/big", insecure=True, on_progress=interrupt)
    partial = local_store().partial_path(digest)
    assert 0 < partial.stat().st_size == seen[1] < len(payload)

    registry.chunk_delay = 0
    first = len(registry.log)
    pull(f"{registry.host}/library/big", insecure=True)
    assert [r.range for r in registry.log[first:] if r.path.endswith(digest)] == [
        f"bytes={seen[1]}-"]
    assert resolve(f"{registry.host}/library/big").path.read_bytes() == payload


def test_pulling_again_downloads_no_blob(registry, tiny_gguf):
    manifest = add_tiny(registry, tiny_gguf)
    pull(f"{registry.host}/library/tiny", insecure=True)
    registry.clear_log()
    events: list[dict] = []
    pull(f"{registry.host}/library/tiny", insecure=True, on_progress=events.append)
    assert registry.paths() == ["/v2/library/tiny/manifests/latest"]
    layer_events = [e for e in events if "digest" in e]
    assert len(layer_events) == len(hexes(manifest))
    assert all(e["completed"] == e["total"] for e in layer_events)


def test_a_blob_shared_with_another_model_is_not_fetched_again(registry, tiny_gguf):
    add_tiny(registry, tiny_gguf)
    registry.add_model("library", "other", "v1", [(MODEL, tiny_gguf)])
    pull(f"{registry.host}/library/tiny", insecure=True)
    registry.clear_log()
    pull(f"{registry.host}/library/other:v1", insecure=True)
    assert registry.paths() == ["/v2/library/other/manifests/v1"]
    assert resolve(f"{registry.host}/library/other:v1").path.read_bytes() == \
        tiny_gguf.read_bytes()


# -- Hugging Face ------------------------------------------------------------------------------


@pytest.fixture
def hf(registry, cdn, monkeypatch, tiny_gguf):
    monkeypatch.setenv("HF_ENDPOINT", registry.url)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    registry.redirect_blobs_to = cdn  # like the Hub's redirects to its CDN
    registry.add_hf_repo("user", "repo", {
        "model-Q4_K_M.gguf": tiny_gguf,
        "model-Q8_0.gguf": b"Q8_0 weights " * 1000,
        "mmproj-model-f16.gguf": b"projector " * 100,
        "README.md": b"# a model",
    })
    return registry


def test_hf_pull_picks_q4_k_m_and_the_projector(hf, cdn, tiny_gguf):
    events: list[dict] = []
    name = pull("hf.co/user/repo", on_progress=events.append)
    assert name == ModelName("hf.co", "user", "repo", "latest")
    resolved = resolve("hf.co/user/repo")
    assert resolved.path.read_bytes() == tiny_gguf.read_bytes()
    assert resolved.projector is not None
    assert resolved.projector.read_bytes() == b"projector " * 100
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    assert {e["digest"] for e in events if "digest" in e} == {
        digest_of(tiny_gguf), digest_of(b"projector " * 100)}
    # The token goes to the Hub, never to the host it redirects downloads to.
    assert {r.authorization for r in hf.log} == {"Bearer hf_secret"}
    assert cdn.log and {r.authorization for r in cdn.log} == {None}
    assert "/user/repo/resolve/main/model-Q4_K_M.gguf" in hf.paths()
    assert "/user/repo/resolve/main/model-Q8_0.gguf" not in hf.paths()


def test_hf_pull_with_a_quant_tag_picks_that_file(hf):
    pull("hf.co/user/repo:q8_0")
    resolved = resolve("hf.co/user/repo:q8_0")
    assert resolved.path.read_bytes() == b"Q8_0 weights " * 1000
    assert resolved.projector is not None


def test_hf_pull_of_a_missing_quant_lists_the_available_ones(hf):
    with pytest.raises(PullError, match=r"no Q2_K file; available quantizations: Q4_K_M, Q8_0$"):
        pull("hf.co/user/repo:Q2_K")
    assert not any("/resolve/" in p for p in hf.paths())


def test_hf_split_files_are_not_supported_yet(registry, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", registry.url)
    registry.add_hf_repo("user", "big", {
        "Q4_K_M/big-Q4_K_M-00001-of-00002.gguf": b"part one",
        "Q4_K_M/big-Q4_K_M-00002-of-00002.gguf": b"part two",
    })
    with pytest.raises(PullError, match="split GGUF files are not supported yet"):
        pull("hf.co/user/big")


def test_hf_unknown_repo_and_unverifiable_file(registry, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", registry.url)
    with pytest.raises(PullError, match="'hf.co/user/nope' not found on Hugging Face"):
        pull("hf.co/user/nope")
    registry.add_hf_repo("user", "plain", {"model-Q4_0.gguf": b"weights"},
                         no_lfs=("model-Q4_0.gguf",))
    with pytest.raises(PullError, match="cannot be verified"):
        pull("hf.co/user/plain")


def _files(*paths: str) -> list[HfFile]:
    return [HfFile(p, 100 + i, hashlib.sha256(p.encode()).hexdigest())
            for i, p in enumerate(paths)]


def _pick(files: list[HfFile], tag: str) -> str:
    return choose_hf_model(files, ModelName("hf.co", "u", "r", tag)).path


def test_hf_quant_choice():
    files = _files("m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-Q4_K.gguf", "m-IQ4_XS.gguf",
                   "m-UD-Q2_K_XL.gguf", "m-BF16.gguf")
    assert _pick(files, "latest") == "m-Q4_K_M.gguf"
    assert _pick(files, "Q4_K") == "m-Q4_K.gguf"  # a token, not a prefix of Q4_K_M
    assert _pick(files, "iq4_xs") == "m-IQ4_XS.gguf"
    assert _pick(files, "Q2_K_XL") == "m-UD-Q2_K_XL.gguf"
    assert _pick(files, "bf16") == "m-BF16.gguf"
    assert _pick(files[:2], "Q4_K") == "m-Q4_K_M.gguf"  # no exact file: the best Q4_K_*
    assert _pick(_files("m-Q6_K.gguf", "m-Q3_K_L.gguf"), "latest") == "m-Q6_K.gguf"  # smallest
    assert _pick(_files("m-Q8_0.gguf", "m-Q4_0.gguf"), "latest") == "m-Q4_0.gguf"


# -- the real model ----------------------------------------------------------------------------


def test_pull_the_real_model_and_chat_with_it(registry, bundled_path):
    import chatcli

    registry.add_model("library", "smol", "latest", [(MODEL, bundled_path)])
    start = time.perf_counter()
    pull(f"{registry.host}/library/smol", insecure=True)
    elapsed = time.perf_counter() - start
    print(f"pulled {bundled_path.stat().st_size / 1e6:.0f} MB in {elapsed:.2f} s")
    reply = chatcli.chat(f"{registry.host}/library/smol",
                         [{"role": "user", "content": "Say hi"}],
                         options={"temperature": 0, "seed": 1, "num_predict": 8})
    assert reply.message.content.strip()
