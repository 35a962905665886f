"""Step 06: nginx in front of two instances, streaming straight through."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from harness.server import AUTH, free_port, wait_for_health
from harness.sse import stream_chat

pytestmark = pytest.mark.since("06")



@pytest.fixture
def nginx_binary(in_ci):
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        if in_ci:
            pytest.fail("nginx is not installed: .ci/run must install it")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return binary


@pytest.fixture
def proxy(step, start, nginx_binary, tmp_path):
    """nginx with the step's own nginx.conf, pointed at two live instances."""
    instances = [start(env={"DIRTY_WORKERS": "2"}, dirty_workers=2) for _ in range(2)]
    listen = free_port()
    conf = (step.path / "nginx.conf").read_text()
    conf = conf.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{instances[0].port};")
    conf = conf.replace("server 127.0.0.1:8002;", f"server 127.0.0.1:{instances[1].port};")
    conf = conf.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{listen};")
    assert conf.count(str(instances[0].port)) and conf.count(str(listen)), "nginx.conf changed shape"
    (tmp_path / "nginx.conf").write_text(conf)
    (tmp_path / "logs").mkdir()
    log = open(tmp_path / "nginx.log", "wb")
    process = subprocess.Popen(
        [nginx_binary, "-p", str(tmp_path), "-c", "nginx.conf", "-e", "stderr"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_health(f"http://127.0.0.1:{listen}", 15, process)
        yield f"http://127.0.0.1:{listen}", instances
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.mark.paced
def test_tokens_arrive_progressively_through_nginx(step, proxy):
    url, _ = proxy
    with httpx.Client(base_url=url, timeout=30, headers=AUTH) as http:
        result = stream_chat(http, "explain")
    assert result.status == 200 and result.ended_with_done
    times = [event.at for event in result.token_events]
    # Buffered by the proxy, everything would land at once at the end.
    assert times[len(times) // 2] - times[0] > (times[-1] - times[0]) / 4
    assert result.first_token_at < (result.finished - result.started) / 5


def test_both_instances_serve_traffic(step, proxy):
    url, instances = proxy
    with httpx.Client(base_url=url, timeout=30, headers=AUTH) as http:
        for _ in range(6):
            assert http.post("/chat/sync", json={"prompt": "hi"}).status_code == 200

    def served(instance):
        return len(re.findall(r"POST /chat/sync HTTP/1\.\d\\?\" 200", instance.log()))

    deadline = time.monotonic() + 5
    while min(served(i) for i in instances) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(served(instance) >= 1 for instance in instances)
    assert sum(served(instance) for instance in instances) == 6


def test_nginx_sets_the_request_id(step, proxy):
    url, _ = proxy
    with httpx.Client(base_url=url, timeout=30, headers=AUTH) as http:
        response = http.post("/chat/sync", json={"prompt": "hi"})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_the_conf_in_the_step_is_the_one_tested(step):
    conf = Path(step.path / "nginx.conf").read_text()
    assert "proxy_buffering off;" in conf
    assert "server 127.0.0.1:8001;" in conf and "server 127.0.0.1:8002;" in conf
