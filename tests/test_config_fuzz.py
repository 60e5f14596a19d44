"""Config fuzz: random TOML files over the real schema (right keys, wrong values and types,
unknown keys, broken syntax). Every file either loads into a Config the daemon can build its
App from, or is rejected with a ConfigError of one line; `velollmd --check-config` on a bad
file exits 2 with one line on stderr, never a traceback."""
import dataclasses
import json
import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from velollmd.config import SECTIONS, BackendConfig, ConfigError, load_config
from velollmd.daemon import build_app

ROOT = __file__.rsplit("/tests/", 1)[0]


def toml_value(value) -> str:
    """TOML for a scalar, list or inline table (json.dumps strings are TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(table: dict) -> str:
    lines = []
    for section, keys in table.items():
        if section == "backends":
            for backend in keys:
                lines.append("[[backends]]")
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in backend.items()]
        else:
            lines.append(f"[{json.dumps(section)}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


SCALARS = (st.integers(-2 ** 70, 2 ** 70) | st.sampled_from([0, 1, -1, 65535, 65536, 2 ** 63 - 1])
           | st.floats(allow_nan=True) | st.booleans() | st.text(max_size=12)
           | st.sampled_from(["http://127.0.0.1:9", "http://[::1]:8080/v1", "http://", "http://h:99999",
                              "ftp://x", "json", "*", "../../etc/passwd", "tiny*", "\x00", "debug"]))
VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=5), SCALARS, max_size=2)


def section_of(cls) -> st.SearchStrategy:
    names = [f.name for f in dataclasses.fields(cls)] + ["no_such_key"]
    return st.dictionaries(st.sampled_from(names), VALUES, max_size=4)


BACKEND = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", ""]) | st.text(max_size=4),
     "kind": st.sampled_from(["openai", "llamacpp", "ollama", "vllm"]),
     "url": st.sampled_from(["http://127.0.0.1:9", "http://localhost:11434", "http://", "http://h:70000",
                             "https://[::1]/v1", "127.0.0.1:9"]) | st.text(max_size=8)},
    optional={f.name: VALUES for f in dataclasses.fields(BackendConfig) if f.name not in ("name", "kind", "url")})
TABLES = st.fixed_dictionaries({}, optional={
    **{name: section_of(cls) for name, cls in SECTIONS.items()},
    "backends": st.lists(BACKEND, max_size=3), "surprise": st.just({"x": 1})})


def accept_or_one_line(path) -> None:
    try:
        config = load_config(str(path))
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
        return
    build_app(config)                              # what the daemon does next must not fail either


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TABLES)
def test_random_config_files_load_or_fail_with_one_line(tmp_path, table):
    path = tmp_path / "velollm.toml"
    path.write_text(toml_document(table), encoding="utf-8", errors="surrogatepass")
    accept_or_one_line(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=80) | st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_bytes_as_a_config_file_fail_with_one_line(tmp_path, raw):
    path = tmp_path / "velollm.toml"
    path.write_bytes(raw)
    accept_or_one_line(path)


@pytest.mark.parametrize("text,key", [
    ("[server]\nheader_timeout_s = nan\n", "server.header_timeout_s"),
    ("[server]\nkeepalive_timeout_s = inf\n", "server.keepalive_timeout_s"),
    ("[cache]\nttl_s = 1e300\n", "cache.ttl_s"),
    ("[scheduler]\nqueue_timeout_s = 100000000000000000000000\n", "scheduler.queue_timeout_s"),
    ('[scheduler]\nkey_priorities = {sk-a = 99}\n', "scheduler.key_priorities.sk-a"),
    ('[[backends]]\nname = "a"\nkind = "openai"\nurl = "http://"\n', "backends[0].url"),
    ('[[backends]]\nname = "a"\nkind = "openai"\nurl = "http://h:99999"\n', "backends[0].url"),
    ('[[backends]]\nname = "a"\nkind = "openai"\nurl = "http://h:port"\n', "backends[0].url"),
    ("[server\n", "(syntax)"),
    ("\xff\xfe", "(file)"),
])
def test_each_bad_file_is_exit_2_with_one_line_naming_the_key(tmp_path, text, key):
    path = tmp_path / "velollm.toml"
    path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    done = subprocess.run([sys.executable, "-m", "velollmd", "--check-config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and key in done.stderr and "Traceback" not in done.stderr
