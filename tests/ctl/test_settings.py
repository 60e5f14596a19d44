import os
import subprocess

from velollmd.ctl import settings


def test_parse_environment_lines():
    text = ('[Service]\nEnvironment="OLLAMA_HOST=0.0.0.0:11434"\n'
            'Environment="OLLAMA_NUM_PARALLEL=2" "OLLAMA_KEEP_ALIVE=1h"\n'
            'Environment=OLLAMA_FLASH_ATTENTION=1\n# Environment="OLLAMA_X=commented"\nUser=ollama\n')
    assert settings.parse_environment_lines(text) == {
        "OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_NUM_PARALLEL": "2", "OLLAMA_KEEP_ALIVE": "1h",
        "OLLAMA_FLASH_ATTENTION": "1"}


def test_read_current_dropins_override_env_in_lexical_order(tmp_path):
    (tmp_path / "10-a.conf").write_text('[Service]\nEnvironment="OLLAMA_NUM_PARALLEL=2"\n')
    (tmp_path / "20-b.conf").write_text('[Service]\nEnvironment="OLLAMA_NUM_PARALLEL=3"\n')
    (tmp_path / "ignored.conf.bak").write_text('Environment="OLLAMA_KEEP_ALIVE=9h"\n')
    env = {"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_KEEP_ALIVE": "5m", "PATH": "/bin"}
    current = settings.read_current(env, str(tmp_path))
    assert current["OLLAMA_NUM_PARALLEL"] == settings.Setting("3", str(tmp_path / "20-b.conf"))
    assert current["OLLAMA_KEEP_ALIVE"] == settings.Setting("5m", "env") and "PATH" not in current


def test_read_current_missing_dir():
    assert settings.read_current({}, "/nonexistent/velollm/dir") == {}


def test_dropin_round_trips():
    env = {"OLLAMA_NUM_PARALLEL": "4", "OLLAMA_KEEP_ALIVE": "30m"}
    text = settings.render_dropin(env, "Written by a test.")
    assert text.splitlines()[:2] == ["# Written by a test.", "[Service]"]
    assert settings.parse_environment_lines(text) == env


def test_env_file_is_valid_shell(tmp_path):
    path = tmp_path / "ollama.env"
    settings.write_atomic(path, settings.render_env_file({"OLLAMA_KEEP_ALIVE": "30m", "OLLAMA_X": "a b"}, "t"))
    out = subprocess.run(["sh", "-c", f'. "{path}"; echo "$OLLAMA_KEEP_ALIVE|$OLLAMA_X"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == "30m|a b\n"


def test_write_atomic_keeps_backup_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "ollama.service.d" / "velollm.conf"
    assert settings.write_atomic(path, "first\n") is None          # creates the directory
    backup = settings.write_atomic(path, "second\n")
    assert backup == path.with_name("velollm.conf.bak")
    assert (path.read_text(), backup.read_text()) == ("second\n", "first\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["velollm.conf", "velollm.conf.bak"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_write_atomic_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "velollm.conf"
    path.write_text("old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    try:
        settings.write_atomic(path, "new\n", backup=False)
    except OSError:
        pass
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["velollm.conf"]
