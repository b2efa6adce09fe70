"""Names, the content-addressed store, Modelfiles, and the model commands (no network)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatcli.core.errors import ModelNotFoundError
from chatcli.core.names import InvalidNameError, parse_digest, parse_name
from chatcli.models.gguf import read_gguf
from chatcli.models.modelfile import ModelfileError, create, parse_modelfile
from chatcli.models.resolve import resolve
from chatcli.models.store import MEDIA, Layer, Manifest, StoreError, local_store

CHAT = [sys.executable, "-m", "chatcli"]


def chat(args, env, input="", timeout=120):
    return subprocess.run(CHAT + args, env=env, input=input, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("text, parts", [
    ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
    ("qwen3:0.6b", ("registry.ollama.ai", "library", "qwen3", "0.6b")),
    ("User/Model:tag", ("registry.ollama.ai", "user", "model", "tag")),
    ("127.0.0.1:8080/library/tiny", ("127.0.0.1:8080", "library", "tiny", "latest")),
    ("hf.co/Org/Repo-GGUF:Q4_K_M", ("hf.co", "Org", "Repo-GGUF", "Q4_K_M")),
    ("huggingface.co/org/repo", ("hf.co", "org", "repo", "latest")),
])
def test_name_grammar(text, parts):
    assert parse_name(text).parts == parts


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b/c/d", "x:..", "evil/..", "a b", "",
                                 "..", "model:tag/x", "host/ns/.hidden", "x:-"])
def test_bad_names_are_rejected(bad):
    with pytest.raises(InvalidNameError):
        parse_name(bad)


def test_digests_are_validated():
    hexd = "a" * 64
    assert parse_digest(f"sha256:{hexd}") == hexd == parse_digest(f"sha256-{hexd}")
    for bad in ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "md5:" + hexd, hexd]:
        with pytest.raises(InvalidNameError):
            parse_digest(bad)


def test_gguf_reader(bundled_path, tmp_path):
    info = read_gguf(bundled_path)
    assert info.architecture == "llama" and info.parameter_count == 134_515_008
    assert info.arch_value("context_length") == 8192
    assert info.array_lengths["tokenizer.ggml.tokens"] == 49152
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(bundled_path.read_bytes()[:200])
    from chatcli.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="truncated"):
        read_gguf(cut)


def make_model(store, gguf: Path, name: str, extra=()):
    model = store.add_blob_file(gguf)
    layers = [Layer(MEDIA + "model", model.digest, model.size)]
    for kind, data in extra:
        blob = store.add_blob_bytes(data)
        layers.append(Layer(MEDIA + kind, blob.digest, blob.size))
    store.write_manifest(parse_name(name), Manifest(layers=layers))


def test_store_resolve_copy_and_remove_frees_only_unshared_blobs(tiny_gguf):
    store = local_store()
    make_model(store, tiny_gguf, "tiny", [("params", b'{"temperature": 0.1, "tfs_z": 0.9}'),
                                          ("system", b"Be tiny.")])
    r = resolve("tiny")
    assert r.path.parent == store.blobs and r.options == {"temperature": 0.1}
    assert r.system == "Be tiny." and r.source == "chatcli"
    store.copy(parse_name("tiny"), parse_name("tiny2:v1"))
    blob = r.path
    assert store.remove(parse_name("tiny")) == []  # still used by tiny2:v1
    assert blob.exists() and resolve("tiny2:v1").path == blob
    freed = store.remove(parse_name("tiny2:v1"))
    assert len(freed) == 3 and not blob.exists()
    assert list(store.blobs.iterdir()) == []
    with pytest.raises(ModelNotFoundError, match="try: chat pull tiny"):
        resolve("tiny")


def test_manifest_missing_blob_is_refused(tiny_gguf):
    store = local_store()
    layer = Layer(MEDIA + "model", "sha256:" + "0" * 64, 10)
    with pytest.raises(StoreError, match="missing blob"):
        store.write_manifest(parse_name("ghost"), Manifest(layers=[layer]))


def test_modelfile_parsing():
    mf = parse_modelfile('# a comment\nFROM llama3.2\nPARAMETER temperature 0.2\n'
                         'PARAMETER stop "<|im_end|>"\nPARAMETER stop <END>\n'
                         'SYSTEM """You are\nterse."""\nMESSAGE user Hi?\n'
                         'MESSAGE assistant Hello.\nLICENSE MIT\nTEMPLATE """{{ .Prompt }}"""\n')
    assert mf.base == "llama3.2"
    assert mf.parameters == {"temperature": 0.2, "stop": ["<|im_end|>", "<END>"]}
    assert mf.system == "You are\nterse." and mf.template == "{{ .Prompt }}"
    assert mf.messages == [{"role": "user", "content": "Hi?"},
                           {"role": "assistant", "content": "Hello."}]
    for bad, fragment in [("PARAMETER temperature 1", "no FROM"),
                          ("FROM x\nPARAMETER warmth 1", "line 2: unknown option"),
                          ("FROM x\nFOO bar", "unknown instruction"),
                          ('FROM x\nSYSTEM """never closed', "unterminated"),
                          ("FROM x\nMESSAGE robot hi", "MESSAGE role"),
                          ("FROM x\nADAPTER ./lora.gguf", "not supported")]:
        with pytest.raises(ModelfileError, match=fragment):
            parse_modelfile(bad)


def test_create_from_gguf_path_and_from_a_name(tiny_gguf, tmp_path):
    (tmp_path / "m.gguf").write_bytes(tiny_gguf.read_bytes())
    mf = parse_modelfile("FROM ./m.gguf\nPARAMETER temperature 0.3\nSYSTEM Be brief.\n",
                         tmp_path)
    create("mine", mf)
    r = resolve("mine")
    assert r.options == {"temperature": 0.3} and r.system == "Be brief."
    # FROM an existing name inherits its layers; new lines override or add.
    create("mine2", parse_modelfile("FROM mine\nPARAMETER top_k 5\nMESSAGE user Hi\n"))
    r2 = resolve("mine2")
    assert r2.path == r.path  # the weights blob is shared, not copied
    assert r2.options == {"temperature": 0.3, "top_k": 5} and r2.system == "Be brief."
    assert r2.messages == [{"role": "user", "content": "Hi"}]
    with pytest.raises(ModelfileError, match="no such file"):
        create("x", parse_modelfile("FROM ./missing.gguf", tmp_path))


def test_model_messages_and_system_reach_the_engine(tiny_gguf, tmp_path):
    from chatcli.client.local import with_model_system

    create("withmsgs", parse_modelfile(f"FROM {tiny_gguf}\nSYSTEM S\nMESSAGE user U0\n"
                                       "MESSAGE assistant A0\n"))
    r = resolve("withmsgs")
    out = with_model_system([{"role": "user", "content": "U1"}], r)
    assert [m["content"] for m in out] == ["S", "U0", "A0", "U1"]
    mine = with_model_system([{"role": "system", "content": "mine"},
                              {"role": "user", "content": "U1"}], r)
    assert [m["content"] for m in mine] == ["mine", "U0", "A0", "U1"]


def test_cli_create_list_show_cp_rm(cli_env, tiny_gguf, tmp_path, chatcli_home):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_gguf}\nPARAMETER temperature 0.4\n"
                         'PARAMETER stop "<eot>"\nSYSTEM You are tiny.\nLICENSE Tiny License\n')
    p = chat(["create", "tiny", "-f", str(modelfile)], cli_env)
    assert p.returncode == 0 and "success" in p.stdout, p.stderr
    p = chat(["list"], cli_env)
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED", "STORE"]
    row = next(line for line in lines if line.startswith("tiny:latest"))
    assert row.split()[-1] == "chatcli" and len(row.split()[1]) == 12
    assert any(line.startswith("smollm2:135m") and line.endswith("bundled") for line in lines)

    p = chat(["show", "tiny"], cli_env)
    assert p.returncode == 0
    for fragment in ["architecture        llama", "context length      512",
                     "quantization        F32", "Capabilities", "temperature    0.4",
                     'stop           "<eot>"', "You are tiny.", "Tiny License"]:
        assert fragment in p.stdout, fragment
    assert chat(["show", "tiny", "--system"], cli_env).stdout.strip() == "You are tiny."
    assert chat(["show", "tiny", "--license"], cli_env).stdout.strip() == "Tiny License"
    params = chat(["show", "tiny", "--parameters"], cli_env).stdout
    assert "temperature    0.4" in params and 'stop           "<eot>"' in params
    mf = chat(["show", "tiny", "--modelfile"], cli_env).stdout
    assert "FROM " in mf and "PARAMETER temperature 0.4" in mf
    assert 'SYSTEM """You are tiny."""' in mf
    assert "<|im_start|>" in chat(["show", "tiny", "--template"], cli_env).stdout  # ChatML

    assert chat(["cp", "tiny", "tiny-copy"], cli_env).returncode == 0
    blobs = sorted((chatcli_home / "models" / "blobs").iterdir())
    p = chat(["rm", "tiny"], cli_env)
    assert p.returncode == 0 and "deleted 'tiny'" in p.stdout
    assert sorted((chatcli_home / "models" / "blobs").iterdir()) == blobs  # shared: kept
    p = chat(["run", "tiny-copy", "--num-predict", "4", "hello"], cli_env)
    assert p.returncode == 0, p.stderr
    assert chat(["rm", "tiny-copy"], cli_env).returncode == 0
    assert list((chatcli_home / "models" / "blobs").iterdir()) == []
    p = chat(["rm", "nothing-here"], cli_env)
    assert p.returncode == 1 and "not found" in p.stderr
    p = chat(["run", "nothing-here", "hi"], cli_env)
    assert p.returncode == 1
    assert "model 'nothing-here' not found; try: chat pull nothing-here" in p.stderr
    p = chat(["show", "../etc/passwd"], cli_env)
    assert p.returncode == 1 and "Traceback" not in p.stderr


@pytest.fixture
def ollama_home(tmp_path, bundled_path, monkeypatch):
    """A fake Ollama store whose blob is a symlink to the bundled GGUF."""
    root = tmp_path / "ollama-models"
    digest = hashlib.sha256(bundled_path.read_bytes()).hexdigest()
    (root / "blobs").mkdir(parents=True)
    blob = root / "blobs" / f"sha256-{digest}"
    os.symlink(bundled_path, blob)
    params = b'{"temperature": 0.2, "stop": ["<|im_end|>"]}'
    pdigest = hashlib.sha256(params).hexdigest()
    (root / "blobs" / f"sha256-{pdigest}").write_bytes(params)
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "layers": [{"mediaType": "application/vnd.ollama.image.model",
                            "digest": f"sha256:{digest}", "size": blob.stat().st_size},
                           {"mediaType": "application/vnd.ollama.image.params",
                            "digest": f"sha256:{pdigest}", "size": len(params)}]}
    mdir = root / "manifests" / "registry.ollama.ai" / "library" / "smol"
    mdir.mkdir(parents=True)
    (mdir / "latest").write_text(json.dumps(manifest))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def test_ollama_store_is_listed_and_run_in_place(ollama_home, cli_env, chatcli_home):
    env = {**cli_env, "OLLAMA_MODELS": str(ollama_home)}
    r = resolve("smol")
    assert r.source == "ollama" and r.path.parent == ollama_home / "blobs"
    assert r.options == {"temperature": 0.2, "stop": ["<|im_end|>"]}
    p = chat(["list"], env)
    row = next(line for line in p.stdout.splitlines() if line.startswith("smol:latest"))
    assert row.endswith("ollama")
    p = chat(["run", "smol", "--temperature", "0", "--num-predict", "8", "Say hi."], env)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    assert not (chatcli_home / "models" / "blobs").exists()  # used in place: no copy
    p = chat(["rm", "smol"], env)
    assert p.returncode == 1 and "ollama rm smol" in p.stderr
    assert (ollama_home / "manifests" / "registry.ollama.ai" / "library" / "smol").exists()


def test_repl_model_completion_offers_store_names(tiny_gguf):
    from prompt_toolkit.document import Document
    from scripted import ScriptedClient

    from chatcli.client.session import Session
    from chatcli.repl.loop import RegistryCompleter, ReplState, Settings

    create("tinycomplete", parse_modelfile(f"FROM {tiny_gguf}"))
    state = ReplState(Session(ScriptedClient(), "scripted"), Settings())
    text = "/model tinyc"
    got = [c.text for c in RegistryCompleter(state).get_completions(Document(text), None)]
    assert got == ["tinycomplete:latest"]
    text = "/model smol"
    got = [c.text for c in RegistryCompleter(state).get_completions(Document(text), None)]
    assert "smollm2:135m" in got
