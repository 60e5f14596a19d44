"""Exposure rules on a real daemon process: no open network server by accident, every path but
/health behind a key, a metrics-only key for scrapers, keys given as SHA-256 digests."""
import hashlib
import socket
import subprocess
import sys
import urllib.request

import openai
import pytest

from tests.rig.net import free_port
from tests.test_daemon import activated, get, running, write_config
from velollmd.config import config_from_table
from velollmd.errors import ConfigError

API_KEY = "sk-only-its-digest-is-in-the-file"
DIGEST = "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()


def daemon(config):
    return subprocess.run([sys.executable, "-m", "velollmd", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def with_key(url, key):
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})


def test_non_loopback_without_keys_refuses_to_start(tmp_path):
    config = write_config(tmp_path, free_port())
    config.write_text(config.read_text().replace("[server]", '[server]\nhost = "0.0.0.0"'))
    result = daemon(config)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "server.host" in line and "allow_open" in line


def test_allow_open_starts_on_every_address(tmp_path, notify):
    port = free_port()
    config = write_config(tmp_path, port)
    config.write_text(config.read_text().replace("[server]", '[server]\nhost = "0.0.0.0"\nallow_open = true'))
    with running(config, notify):
        assert notify.recv(4096).startswith(b"READY=1\nSTATUS=listening on 0.0.0.0:")
        assert get(f"http://127.0.0.1:{port}/v1/models")[0] == 200


def test_socket_activation_on_a_network_address_needs_keys_too(tmp_path):
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    config = write_config(tmp_path, 1)
    fd = listener.fileno()
    with listener:
        result = subprocess.run(activated(fd, config), pass_fds=(fd,), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "server.host: 0.0.0.0 is not loopback" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("server,key", [
    ({"api_keys": ["sha256:abc"]}, "server.api_keys[0]"),
    ({"api_keys": ["k"], "metrics_key": "sha256:" + "g" * 64}, "server.metrics_key"),
    ({"api_keys": [""]}, "server.api_keys[0]"),
])
def test_bad_digests_are_config_errors(server, key):
    with pytest.raises(ConfigError) as info:
        config_from_table({"server": server})
    assert info.value.key == key


def test_keys_guard_everything_but_health(tmp_path, notify):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, port)
    config.write_text(config.read_text().replace(
        "[server]", f'[server]\napi_keys = ["{DIGEST}"]\nmetrics_key = "scrape-me"'))
    with running(config, notify):
        notify.recv(4096)
        assert get(f"{url}/health")[0] == 200
        for path in ("/", "/metrics", "/v1/models", "/v1/velollm/queue"):
            status, body = get(url + path)
            assert status == 401 and body["error"]["code"] == "invalid_api_key", path
        # the metrics key opens /metrics and nothing else
        with urllib.request.urlopen(with_key(f"{url}/metrics", "scrape-me"), timeout=10) as r:
            assert r.status == 200 and b"velollm_http_requests_total" in r.read()
        assert get(with_key(f"{url}/v1/models", "scrape-me"))[0] == 401
        assert get(with_key(f"{url}/", "scrape-me"))[0] == 401
        # the API key, configured only as its digest, opens everything; the digest itself does not
        assert get(with_key(f"{url}/", API_KEY))[0] == 200
        with urllib.request.urlopen(with_key(f"{url}/metrics", API_KEY), timeout=10) as r:
            assert r.status == 200
        assert openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0).models.list().data == []
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key=DIGEST, max_retries=0).models.list()
