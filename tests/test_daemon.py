"""The daemon as a real process: READY/STOPPING over sd_notify, /health, JSON logs, SIGTERM."""
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from tests.rig.net import free_port


def write_config(tmp_path, port, extra="", server=""):
    """The daemon's config file: `server` lines go into [server], `extra` at the end."""
    path = tmp_path / "velollm.toml"
    path.write_text(f'[server]\nport = {port}\ndrain_timeout_s = 2\n{server}[cache]\npath = ""\n[responses]\npath = ""\n[key_limits]\npath = ""\n{extra}')
    return path


def start(config, notify, extra_env=None, **kwargs):
    env = {**os.environ, "NOTIFY_SOCKET": notify.getsockname(), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    return subprocess.Popen(kwargs.pop("argv", [sys.executable, "-m", "velollmd", "--config", str(config)]),
                            env=env, stderr=subprocess.PIPE, text=True, **kwargs)


@contextlib.contextmanager
def running(config, notify, **kwargs):
    """The daemon as a process; afterwards terminated, reaped and its stderr pipe closed."""
    with start(config, notify, **kwargs) as proc:
        try:
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def killed_stderr(proc) -> str:
    """What a daemon process wrote on stderr, once it is killed (if it still ran)."""
    proc.kill()
    with proc.stderr:
        return proc.stderr.read()


def test_ready_health_sigterm_stopping(tmp_path, notify):
    port = free_port()
    proc = start(write_config(tmp_path, port), notify)
    try:
        ready = notify.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=listening on 127.0.0.1:")
        status, body = get(f"http://127.0.0.1:{port}/health")
        assert status == 200 and body["status"] == "ok"
        status, body = get(f"http://127.0.0.1:{port}/no/such/route")
        assert status == 404 and set(body["error"]) == {"message", "type", "param", "code", "request_id"}
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096).decode().startswith("STOPPING=1")
        assert proc.wait(timeout=20) == 0
    finally:
        stderr = killed_stderr(proc)
    records = [json.loads(line) for line in stderr.splitlines()]
    assert [r["msg"] for r in records] == ["listening", "access", "access", "draining", "stopped"]
    assert all(r["level"] == "info" and r["ts"].endswith("Z") for r in records)
    access = [r for r in records if r["logger"] == "velollmd.access"]      # one JSON line per request
    assert [(r["path"], r["status"]) for r in access] == [("/health", 200), ("/no/such/route", 404)]
    assert access[1]["request_id"] == body["error"]["request_id"]


def signal_mask(pid: int, field: str) -> int:
    """A signal mask of /proc/PID/status (SigIgn, SigCgt): bit n-1 is signal n."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1], 16) for line in status if line.startswith(field + ":"))


def test_a_sighup_during_start_up_is_ignored_not_fatal(tmp_path, notify):
    """systemd's ExecReload=kill -HUP (or logrotate) can hit a daemon still importing, loading
    models or binding: the default action of SIGHUP would kill it. The daemon ignores SIGHUP
    from its first line until its reload handler is installed."""
    port = free_port()
    hup = 1 << (signal.SIGHUP - 1)
    with running(write_config(tmp_path, port), notify) as proc:
        ignored = False
        while proc.poll() is None and not signal_mask(proc.pid, "SigCgt") & hup:   # no handler yet
            if signal_mask(proc.pid, "SigIgn") & hup:
                ignored = True
                proc.send_signal(signal.SIGHUP)
                break
        assert ignored, "SIGHUP was not ignored while the daemon started"
        assert notify.recv(4096).startswith(b"READY=1")
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
        assert proc.poll() is None
        proc.send_signal(signal.SIGHUP)                         # once started: a reload, as before
        assert notify.recv(4096).startswith(b"RELOADING=1")
        assert notify.recv(4096).startswith(b"READY=1")
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path, notify):
    proc = start(write_config(tmp_path, free_port()), notify)
    try:
        while proc.poll() is None and not signal_mask(proc.pid, "SigIgn") & (1 << (signal.SIGHUP - 1)):
            pass                                        # until velollmd's main() runs
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
    finally:
        stderr = killed_stderr(proc)
    assert "Traceback" not in stderr and "velollmd: interrupted while starting" in stderr


def raw_status(port: int, data: bytes) -> int:
    """Send raw bytes, read the answer until the server closes; its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_requests_the_http_server_refuses_are_in_the_access_log_and_the_metrics(tmp_path, notify):
    """An operator counts 408s, 413s, 431s and the 503s of a full connection cap as any other
    answer: one access line each and velollm_http_requests_total, not silence."""
    port = free_port()
    config = write_config(tmp_path, port, server="max_body_bytes = 1024\nmax_connections = 1\n")
    proc = start(config, notify)
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        sent = [
            (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 4096\r\n\r\n", 413),
            (b"GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 20000 + b"\r\n\r\n", 431),
            (b"POST /api/chat HTTP/1.1\r\nHost: a\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", 415),
            (b"GARBAGE\r\n\r\n", 400),
        ]
        assert [raw_status(port, data) for data, _ in sent] == [status for _, status in sent]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as busy:
            busy.sendall(b"GET /health HTTP/1.1\r\n")                  # mid-head: not idle
            assert raw_status(port, b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n") == 503
            busy.sendall(b"Host: a\r\nConnection: close\r\n\r\n")
            busy.recv(65536)
        status, metrics = 0, ""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            status, metrics = answer.status, answer.read().decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        stderr = killed_stderr(proc)
    access = [r for r in map(json.loads, stderr.splitlines()) if r["msg"] == "access"]
    assert [(r["method"], r["path"], r["status"]) for r in access[:6]] == [
        ("POST", "/v1/chat/completions", 413), ("GET", "/v1/models", 431), ("POST", "/api/chat", 415),
        ("", "", 400), ("", "", 503), ("GET", "/health", 200)]
    assert status == 200
    for code in ("413", "431", "415", "400", "503"):
        assert f'status="{code}"' in metrics, code


def test_api_keys_protect_everything_but_health(tmp_path, notify):
    port = free_port()
    with running(write_config(tmp_path, port, server='api_keys = ["sk-1"]\n'), notify):
        notify.recv(4096)
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
        status, body = get(f"http://127.0.0.1:{port}/v1/anything")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/anything",
                                         headers={"Authorization": "Bearer sk-1"})
        assert get(request)[0] == 404                # authenticated: on to routing


def activated(fd: int, config) -> list[str]:
    """What systemd does for socket activation: the argv of a launcher that puts `fd` at fd 3,
    sets LISTEN_PID to its own pid (the one that execs the daemon) and execs velollmd."""
    launcher = (f"import os, sys; os.dup2({fd}, 3); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                f"os.execv(sys.executable, [sys.executable, '-m', 'velollmd', '--config', {str(config)!r}])")
    return [sys.executable, "-c", launcher]


def test_socket_activation_serves_on_the_passed_socket(tmp_path, notify):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    config = write_config(tmp_path, 1)          # the configured port is ignored
    fd = listener.fileno()
    argv = activated(fd, config)
    with listener, running(config, notify, argv=argv, pass_fds=(fd,)):
        assert notify.recv(4096).startswith(b"READY=1")
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200


def test_socket_activation_on_a_unix_socket_serves_without_keys(tmp_path, notify):
    """ListenStream=/run/velollmd/api.sock: local only (its file's permissions guard it), so no
    api_keys are needed, and the daemon says where it listens."""
    path = str(tmp_path / "api.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    config = write_config(tmp_path, 1)
    fd = listener.fileno()
    argv = activated(fd, config)
    with listener, running(config, notify, argv=argv, pass_fds=(fd,)) as proc:
        ready = notify.recv(4096).decode()
        assert ready.startswith(f"READY=1\nSTATUS=listening on {path}"), ready
        assert unix_request(path, b"GET /health").startswith(b"HTTP/1.1 200 ")
        flushed = unix_request(path, b"DELETE /v1/velollm/cache")     # local: no key needed, as on loopback
        assert flushed.startswith(b"HTTP/1.1 200 ") and b'"cache.flush"' in flushed, flushed
        proc.send_signal(signal.SIGHUP)                      # a reload checks the address again
        assert notify.recv(4096).startswith(b"RELOADING=1")
        assert notify.recv(4096).decode().endswith(f"listening on {path}; configuration reloaded")


def unix_request(path: str, request_line: bytes) -> bytes:
    """The whole answer to one request without a body over the UNIX socket at `path`."""
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(path)
        client.sendall(request_line + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def test_watchdog_pings_from_the_event_loop(tmp_path, notify):
    port = free_port()
    with running(write_config(tmp_path, port), notify, extra_env={"WATCHDOG_USEC": "200000"}):
        states = [notify.recv(4096).decode() for _ in range(4)]
    assert any(s.startswith("READY=1") for s in states)
    assert states.count("WATCHDOG=1") >= 2


def test_settle_gc_freezes_what_startup_built_and_spaces_young_collections():
    import gc

    from velollmd.daemon import GC_YOUNG_FACTOR, settle_gc

    before = gc.get_threshold()
    try:
        settle_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (before[0] * GC_YOUNG_FACTOR, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_backend_down_at_start_is_logged_once_with_its_error(tmp_path, notify):
    """An operator who starts the daemon before llama-server (or with a wrong URL) reads it in
    the log at once; only later changes of health were logged, so a backend down from the
    start said nothing until a request failed."""
    port, dead = free_port(), free_port()
    config = write_config(tmp_path, port, f'[[backends]]\nname = "llama"\nkind = "llamacpp"\n'
                                          f'url = "http://127.0.0.1:{dead}"\nhealth_interval_s = 60\n')
    proc = start(config, notify)
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        stderr = killed_stderr(proc)
    records = [json.loads(line) for line in stderr.splitlines()]
    down = [r for r in records if r.get("backend") == "llama" and r["level"] == "warning"]
    assert [r["msg"] for r in down] == ["backend unhealthy"]
    assert down[0]["healthy"] is False and f"127.0.0.1:{dead}" in down[0]["error"]
    assert records.index(down[0]) < [r["msg"] for r in records].index("listening")


def test_a_listen_address_that_cannot_be_had_is_one_error_line_naming_it(tmp_path, notify):
    """'cannot start: [Errno -2] Name or service not known' said neither which name nor port."""
    port = free_port()
    proc = start(write_config(tmp_path, port, server='host = "nosuchhost.invalid"\nallow_open = true\n'), notify)
    try:
        assert proc.wait(timeout=30) == 1
    finally:
        stderr = killed_stderr(proc)
    [record] = [json.loads(line) for line in stderr.splitlines()]
    assert record["level"] == "error" and record["msg"].startswith("cannot start: ")
    assert record["listen"] == f"nosuchhost.invalid:{port}"


def test_out_of_memory_at_start_is_one_error_line_not_a_traceback(tmp_path, notify):
    """What the config sizes at start (the semantic cache's 10M rows: 14 GiB) past what the
    process may have (an address-space limit plays a small machine): one line, exit 1."""
    config = tmp_path / "velollm.toml"
    config.write_text(f'[server]\nport = {free_port()}\n[cache]\npath = ""\nsemantic_max_entries = 10000000\n'
                      '[responses]\npath = ""\n[key_limits]\npath = ""\n')
    limit = 4 << 30
    proc = start(config, notify, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        stderr = killed_stderr(proc)
    [record] = [json.loads(line) for line in stderr.splitlines()]
    assert record["level"] == "error" and record["msg"].startswith("cannot start: out of memory: ")
    assert record["config"] == str(config)
