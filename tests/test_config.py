import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from velollmd import config as config_module
from velollmd.config import (SECTIONS, BackendConfig, Config, KeyConfig, check_engine_paths, config_from_table,
                             load_config)
from velollmd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_is_valid_and_documents_the_defaults():
    config = load_config(str(ROOT / "etc/velollm.toml"))
    defaults = Config()
    for section in SECTIONS:
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.backends[0].kind == "llamacpp"
    # each backend shows every key at its default; only what names it and where it is differs
    placed = {"name", "kind", "url", "models_dir"}
    for backend in config.backends:
        assert dataclasses.replace(backend, **{key: getattr(BackendConfig(), key) for key in placed}) \
            == BackendConfig(), backend.name


def uncommented(text: str, first_line: str) -> str:
    """The commented-out example of the shipped file that starts at `# {first_line}`, uncommented
    (its lines up to the first that is not a `# key = value` line)."""
    lines = text.splitlines()
    start = lines.index(f"# {first_line}")
    block = [first_line]
    for line in lines[start + 1:]:
        if not re.match(r"# [a-z0-9_]+ = ", line):
            break
        block.append(line[2:])
    return "\n".join(block) + "\n"


def test_the_commented_examples_of_the_shipped_file_are_valid_at_their_stated_values():
    text = (ROOT / "etc/velollm.toml").read_text()
    keys = tomllib.loads(uncommented(text, "[[keys]]").replace('"sk-..."', '"sk-ci"').replace(
        'key_sha256 = "<64 hex>"', "# key_sha256"))
    entry = config_from_table(keys, "etc/velollm.toml").keys[0]
    assert dataclasses.replace(entry, name="", key="") == KeyConfig()      # each shown at its default
    ollama = tomllib.loads(uncommented(text, "[[backends]]"))
    backend = config_from_table(ollama, "etc/velollm.toml").backends[0]
    assert (backend.kind, backend.slots) == ("ollama", 4)
    aliases = tomllib.loads("[aliases]\n" + "\n".join(line[2:] for line in text.splitlines()
                                                       if re.match(r'# "[^"]+" = "', line)))
    assert len(config_from_table(aliases, "etc/velollm.toml").aliases) == 3


def test_every_key_of_every_section_is_documented_in_the_shipped_file():
    text = (ROOT / "etc/velollm.toml").read_text()
    import dataclasses

    from velollmd.config import SECTIONS, BackendConfig, KeyConfig
    for cls in [*SECTIONS.values(), BackendConfig]:
        for f in dataclasses.fields(cls):
            assert f"\n{f.name} =" in text or f"\n{f.name}=" in text or f.name == "key_priorities", f.name
    for f in dataclasses.fields(KeyConfig):                # [[keys]] is an example: commented out
        assert f"\n# {f.name} =" in text, f.name


@pytest.mark.parametrize("table,key,reason", [
    ({"server": {"port": "80"}}, "server.port", "must be int"),
    ({"server": {"port": True}}, "server.port", "must be int"),
    ({"server": {"port": 70000}}, "server.port", "<= 65535"),
    ({"server": {"max_connections": 0}}, "server.max_connections", ">= 1"),
    ({"server": {"colour": "red"}}, "server.colour", "unknown key"),
    ({"servr": {}}, "servr", "unknown"),
    ({"server": {"api_keys": "abc"}}, "server.api_keys", "list of strings"),
    ({"server": {"allowed_origins": "*"}}, "server.allowed_origins", "list of strings"),
    ({"server": {"allowed_origins": ["chat.example.com"]}}, "server.allowed_origins[0]", "such as"),
    ({"server": {"allowed_origins": ["*", "https://a.example, https://b.example"]}},
     "server.allowed_origins[1]", "such as"),
    ({"log": {"level": "loud"}}, "log.level", "one of"),
    ({"cache": {"semantic_threshold": 1.5}}, "cache.semantic_threshold", "<= 1.0"),
    # preallocated at start (numpy, embed_dim floats a row): a traceback where --check-config said ok
    ({"cache": {"semantic_max_entries": 10**30}}, "cache.semantic_max_entries", "<= 10000000"),
    ({"cache": {"semantic_max_entries": 10**10}}, "cache.semantic_max_entries", "<= 10000000"),
    ({"backends": [{"name": "a", "kind": "vllm", "url": "http://x"}]}, "backends[0].kind", "one of"),
    ({"backends": [{"kind": "ollama", "url": "http://x"}]}, "backends[0].name", "required"),
    ({"backends": [{"name": "a", "kind": "ollama", "url": "localhost:11434"}]}, "backends[0].url", "http://"),
    ({"backends": [{"name": "a", "kind": "ollama", "url": "http://127.0.0.1:0"}]}, "backends[0].url", "port from 1"),
    ({"backends": [{"name": "a", "kind": "ollama", "url": "http://127.0.0.1:65536/"}]}, "backends[0].url", "port from 1"),
    ({"backends": [{"name": "a", "kind": "engine"}, {"name": "a", "kind": "engine"}]}, "backends[1].name", "duplicate"),
    ({"scheduler": {"key_priorities": {"k": "high"}}}, "scheduler.key_priorities", "integers"),
    # the name is sent in x-velollm-backend: CR LF added headers to every answer, a non-Latin-1
    # character dropped every connection with a traceback
    ({"backends": [{"name": "e\r\nx-evil: 1", "kind": "engine"}]}, "backends[0].name", "x-velollm-backend"),
    ({"backends": [{"name": "gpu \U0001f680", "kind": "engine"}]}, "backends[0].name", "ASCII"),
    ({"backends": [{"name": "gpu box\nrack 2", "kind": "engine"}]}, "backends[0].name", "ASCII"),
    ({"backends": [{"name": " gpu", "kind": "engine"}]}, "backends[0].name", "inner spaces"),
])
def test_invalid_values_name_the_key_and_reason(table, key, reason):
    with pytest.raises(ConfigError) as info:
        config_from_table(table, "x.toml")
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"x.toml: {key}: ")


@pytest.mark.parametrize("table, key, reason", [
    ({"servr": {}}, "servr", "unknown section or key (did you mean [server]?)"),
    ({"backend": [{"name": "a", "kind": "engine"}]}, "backend", "unknown section or key (did you mean [[backends]]?)"),
    ({"key": [{"name": "a", "key": "k"}]}, "key", "unknown section or key (did you mean [[keys]]?)"),
    ({"alias": {"a": "b"}}, "alias", "unknown section or key (did you mean [aliases]?)"),
    ({"server": {"prot": 1}}, "server.prot", "unknown key (did you mean port?)"),
    ({"backends": [{"name": "a", "kind": "engine", "model_dir": "/m"}]}, "backends[0].model_dir",
     "unknown key (did you mean models_dir?)"),
    ({"server": {"colour": "red"}}, "server.colour", "unknown key"),
    ({"zzz": {}}, "zzz", "unknown section or key"),
])
def test_an_unknown_name_suggests_the_closest_known_one(table, key, reason):
    with pytest.raises(ConfigError) as info:
        config_from_table(table, "x.toml")
    assert (info.value.key, info.value.reason) == (key, reason)


def test_ints_are_accepted_for_float_keys():
    assert config_from_table({"server": {"header_timeout_s": 5}}).server.header_timeout_s == 5.0


def test_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    assert info.value.key == "(syntax)"
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "missing.toml"))
    assert info.value.reason == "file not found"


@pytest.mark.parametrize("content,needle", [
    ("[server]\nport = -1\n", "server.port"),
    ("[server]\nbogus = 1\n", "server.bogus"),
    ("[cache\n", "(syntax)"),
    ('[[backends]]\nname = "e"\nkind = "engine"\nkv_cache_type = "bf16"\n', "backends[0].kv_cache_type"),
])
def test_check_config_exits_2_with_one_line(tmp_path, content, needle):
    path = tmp_path / "v.toml"
    path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "velollmd", "--check-config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and needle in lines[0]


@pytest.mark.parametrize("engine, needle", [
    ('model = "/no/such.gguf"', "backends[0].model: no such file: /no/such.gguf"),
    ('models_dir = "/no/such/folder"', "backends[0].models_dir: no such folder: /no/such/folder"),
    ('models_dir = "{file}"', "backends[0].models_dir: not a folder: {file}"),
    ('model = "{folder}"', "backends[0].model: not a file: {folder}"),
])
def test_check_config_names_an_engine_file_that_is_not_there(tmp_path, engine, needle):
    """A typo in the engine's model path passed the check and only showed in /health once
    the daemon ran: the check says so, on one line, exit 2."""
    names = {"file": tmp_path / "a.gguf", "folder": tmp_path}
    names["file"].write_bytes(b"GGUF")
    path = tmp_path / "v.toml"
    path.write_text('[[backends]]\nname = "engine"\nkind = "engine"\nollama_store = false\n'
                    + engine.format(**names) + "\n")
    proc = subprocess.run([sys.executable, "-m", "velollmd", "--check-config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.strip().splitlines() == [f"velollmd: invalid config: {path}: {needle.format(**names)}"]


def test_check_config_accepts_engine_files_that_are_there(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    path = tmp_path / "v.toml"
    path.write_text(f'[[backends]]\nname = "engine"\nkind = "engine"\nmodel = "{tmp_path / "a.gguf"}"\n'
                    f'models_dir = "{tmp_path}"\n')
    proc = subprocess.run([sys.executable, "-m", "velollmd", "--check-config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_the_shipped_models_dir_may_be_absent(tmp_path, monkeypatch):
    """etc/velollm.toml names /var/lib/velollm/models, which `make run` creates: on a fresh
    machine it is not there yet, and the shipped file must still pass the check."""
    absent = str(tmp_path / "velollm" / "models")
    monkeypatch.setattr(config_module, "DEFAULT_MODELS_DIR", absent)
    engine = {"name": "engine", "kind": "engine", "models_dir": absent}
    check_engine_paths(config_from_table({"backends": [engine]}, "x.toml"))
    with pytest.raises(ConfigError) as info:
        check_engine_paths(config_from_table({"backends": [{**engine, "models_dir": absent + "2"}]}, "x.toml"))
    assert (info.value.key, info.value.reason) == ("backends[0].models_dir", f"no such folder: {absent}2")


def test_check_config_accepts_the_shipped_file():
    proc = subprocess.run([sys.executable, "-m", "velollmd", "--check-config", str(ROOT / "etc/velollm.toml")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_daemon_with_missing_config_exits_2():
    proc = subprocess.run([sys.executable, "-m", "velollmd", "--config", "/nonexistent/velollm.toml"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "/nonexistent/velollm.toml" in proc.stderr


@pytest.mark.parametrize("cache,key", [
    ({"embedder": "backend", "embed_backend": "nope", "embed_model": "m"}, "cache.embed_backend"),
    ({"embedder": "backend", "embed_backend": "a"}, "cache.embed_model"),
])
def test_backend_embedder_needs_a_backend_and_a_model(cache, key):
    table = {"cache": cache, "backends": [{"name": "a", "kind": "ollama", "url": "http://x"}]}
    with pytest.raises(ConfigError) as info:
        config_from_table(table, "x.toml")
    assert info.value.key == key


@pytest.mark.parametrize("item,key,reason", [
    ({"kind": "llamacpp", "url": "http://x", "model": "/m.gguf"}, "backends[0].model", 'only to kind = "engine"'),
    ({"kind": "openai", "url": "http://x", "max_running": 4}, "backends[0].max_running", 'only to kind = "engine"'),
    ({"kind": "engine", "device": "tpu"}, "backends[0].device", "one of"),
    ({"kind": "engine", "max_running": 0}, "backends[0].max_running", ">= 1"),
    ({"kind": "engine", "block_size": 0}, "backends[0].block_size", ">= 1"),
    ({"kind": "engine", "num_ctx": 10**12}, "backends[0].num_ctx", "<= 16777216"),  # was a 500 on every request
    ({"kind": "llamacpp", "url": "http://x", "num_ctx": 1 << 31}, "backends[0].num_ctx", "<= 16777216"),
    ({"kind": "engine", "ollama_store": "yes"}, "backends[0].ollama_store", "must be bool"),
    ({"kind": "engine", "url": "http://x"}, "backends[0].url", 'not apply to kind = "engine"'),   # was ignored
    ({"kind": "engine", "api_key": "k"}, "backends[0].api_key", 'not apply to kind = "engine"'),
    ({"kind": "engine", "chat_template": "bogus"}, "backends[0].chat_template", "'chatml'"),   # was every chat a 400
    ({"kind": "engine", "kv_cache_type": "q8_0"}, "backends[0].kv_cache_type", "'f32', 'f16'"),
    ({"kind": "llamacpp", "url": "http://x", "kv_cache_type": "f16"}, "backends[0].kv_cache_type",
     'only to kind = "engine"'),
])
def test_engine_keys_are_checked(item, key, reason):
    with pytest.raises(ConfigError) as info:
        config_from_table({"backends": [{"name": "b", **item}]}, "t.toml")
    assert key in str(info.value) and reason in str(info.value)


def test_the_chat_template_names_are_the_engines():
    from velollmd.config import CHAT_TEMPLATES
    from velollmd.engine.templates import TEMPLATE_NAMES
    assert CHAT_TEMPLATES == TEMPLATE_NAMES


def test_engine_backend_needs_no_url():
    config = config_from_table({"backends": [{"name": "e", "kind": "engine", "model": "/m.gguf",
                                              "max_running": 4, "keep_alive_s": 0}]})
    assert (config.backends[0].model, config.backends[0].max_running) == ("/m.gguf", 4)


@pytest.mark.parametrize("name", ["llama", "gpu box 1", "llama.cpp@rack-2", 'odd"name\\', "x"])
def test_backend_names_of_visible_ascii_and_inner_spaces_are_taken(name):
    config = config_from_table({"backends": [{"name": name, "kind": "engine"}]}, "t.toml")
    assert config.backends[0].name == name
