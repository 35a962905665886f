"""Step 06: nginx in front of two instances, streaming straight through, and
restarted one at a time (rolling_restart.py) without cutting a stream."""

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.server import AUTH, LiveServer, free_port, loopback_client, wait_for_health
from harness.sse import ChatStream, stream_chat

pytestmark = pytest.mark.since("06")


@pytest.fixture
def nginx_binary(in_ci):
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        if in_ci:
            pytest.fail("nginx is not installed: .ci/run must install it")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return binary


@dataclass
class Proxy:
    url: str
    instances: list[LiveServer]
    prefix: Path  # nginx's prefix: its nginx.conf, pid file and logs

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"


@contextlib.contextmanager
def nginx_in_front(step, nginx_binary: str, prefix: Path, instances: list[LiveServer]) -> Iterator[Proxy]:
    """nginx with the step's own nginx.conf, pointed at two live instances."""
    listen = free_port()
    conf = (step.path / "nginx.conf").read_text()
    conf = conf.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{instances[0].port};")
    conf = conf.replace("server 127.0.0.1:8002;", f"server 127.0.0.1:{instances[1].port};")
    conf = conf.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{listen};")
    assert conf.count(str(instances[0].port)) and conf.count(str(listen)), "nginx.conf changed shape"
    (prefix / "nginx.conf").write_text(conf)
    (prefix / "logs").mkdir()
    log = open(prefix / "nginx.log", "wb")
    process = subprocess.Popen(
        [nginx_binary, "-p", str(prefix), "-c", "nginx.conf", "-e", "stderr"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_health(f"http://127.0.0.1:{listen}", 15, process)
        yield Proxy(f"http://127.0.0.1:{listen}", instances, prefix)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def poll(condition, timeout: float, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(every)
    return value


@pytest.fixture
def proxy(step, start, nginx_binary, tmp_path):
    instances = [start(env={"DIRTY_WORKERS": "2"}, dirty_workers=2) for _ in range(2)]
    with nginx_in_front(step, nginx_binary, tmp_path, instances) as running:
        yield running.url, running.instances


@pytest.mark.paced
def test_tokens_arrive_progressively_through_nginx(step, proxy):
    url, _ = proxy
    with loopback_client(url, timeout=30, headers=AUTH) as http:
        result = stream_chat(http, "explain")
    assert result.status == 200 and result.ended_with_done
    times = [event.at for event in result.token_events]
    # Buffered by the proxy, everything would land at once at the end.
    assert times[len(times) // 2] - times[0] > (times[-1] - times[0]) / 4
    assert result.first_token_at < (result.finished - result.started) / 5


def test_both_instances_serve_traffic(step, proxy):
    url, instances = proxy
    with loopback_client(url, timeout=30, headers=AUTH) as http:
        for _ in range(6):
            assert http.post("/chat/sync", json={"prompt": "hi"}).status_code == 200

    def served(instance):
        return len(re.findall(r"POST /chat/sync HTTP/1\.\d\\?\" 200", instance.log()))

    # Gunicorn writes an access line once the response is sent: wait for all six.
    poll(lambda: sum(served(instance) for instance in instances) >= 6, timeout=5)
    assert all(served(instance) >= 1 for instance in instances)
    assert sum(served(instance) for instance in instances) == 6


def test_nginx_sets_the_request_id(step, proxy):
    url, _ = proxy
    with loopback_client(url, timeout=30, headers=AUTH) as http:
        response = http.post("/chat/sync", json={"prompt": "hi"})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_the_conf_in_the_step_is_the_one_tested(step):
    conf = Path(step.path / "nginx.conf").read_text()
    assert "proxy_buffering off;" in conf
    assert "server 127.0.0.1:8001;" in conf and "server 127.0.0.1:8002;" in conf


# --- a rolling restart: each instance out of nginx, drained, restarted, back ---------------

RESTART_WORKERS = 4
# Enough for ~90 chats in a minute through two instances.
RESTART_ENV = {"DIRTY_WORKERS": str(RESTART_WORKERS), "CHAT_RATE_LIMIT": "100000/minute"}
# New chats while the restart runs: one a second keeps a lone instance's 4
# workers below full, so that none is refused for being busy.
NEW_CHAT_EVERY = 1.0
NEW_PROMPTS = ["hello", "streaming", "code", "what is this?"]


def chat_through(url: str, prompt: str, thinking: bool = False) -> ChatStream:
    # A connection of its own: a new chat does not ride on one that nginx's
    # reload may be closing.
    with loopback_client(url, timeout=90, headers=AUTH) as http:
        return stream_chat(http, prompt, thinking)


def in_flight(instance: LiveServer) -> float:
    with loopback_client(instance.base_url, timeout=10) as http:
        metrics = http.get("/metrics").text
    return float(re.search(r"^chat_in_flight (\S+)$", metrics, re.MULTILINE)[1])


def stop_pidfile_master(path: Path) -> None:
    """Stop a server the restart started: it runs in a session of its own."""
    try:
        pid = int(path.read_text())
        os.killpg(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    if not poll(lambda: not path.exists(), timeout=40, every=0.1):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.paced
def test_a_rolling_restart_cuts_no_stream(step, start, nginx_binary, tmp_path, step_module):
    chat_app = step_module("chat_app")
    pidfile = str(tmp_path / "chat-{port}.pid")
    ports = [free_port(), free_port()]
    instances = [start(env=RESTART_ENV, dirty_workers=RESTART_WORKERS, port=port,
                       args=["--pid", pidfile.format(port=port)]) for port in ports]
    old_pids = {instance.pid for instance in instances}
    # What a deployment runs to start an instance: the same command as the harness's.
    start_command = "exec " + shlex.join([
        sys.executable, "-m", "gunicorn", "-c", "gunicorn_conf.py", "--bind", "127.0.0.1:{port}",
        "--name", f"dirty-chat-{step.path.name}-{{port}}", "--pid", pidfile, "main:app",
    ]) + f" >> {shlex.quote(str(tmp_path))}/restarted-{{port}}.log 2>&1"
    script_env = {**os.environ, **RESTART_ENV, "PYTHONPATH": str(step.path)}
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    chats: list[tuple[str, bool, Future]] = []
    with nginx_in_front(step, nginx_binary, prefix, instances) as proxy, ThreadPoolExecutor(64) as pool:
        try:
            def chat(prompt: str, thinking: bool = False) -> None:
                chats.append((prompt, thinking, pool.submit(chat_through, proxy.url, prompt, thinking)))

            # Long answers open on both instances when the restart begins.
            for _ in range(4):
                chat("explain", thinking=True)
            assert poll(lambda: all(in_flight(i) >= 1 for i in instances), timeout=20), (
                "the four long chats did not reach both instances"
            )
            script = subprocess.Popen(
                [sys.executable, "rolling_restart.py", "--nginx-conf", str(proxy.conf),
                 "--reload", f"{shlex.quote(nginx_binary)} -p {shlex.quote(str(prefix))} -c nginx.conf"
                             " -e stderr -s reload",
                 "--start", start_command, "--pidfile", pidfile],
                cwd=step.path, env=script_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            during = 0
            while script.poll() is None:
                chat(NEW_PROMPTS[during % len(NEW_PROMPTS)])
                during += 1
                with contextlib.suppress(subprocess.TimeoutExpired):
                    script.wait(NEW_CHAT_EVERY)
            output = script.stdout.read()
            results = [(prompt, thinking, future.result(timeout=120)) for prompt, thinking, future in chats]
            new_pids = {int(Path(pidfile.format(port=port)).read_text()) for port in ports}
        finally:
            for port in ports:
                stop_pidfile_master(Path(pidfile.format(port=port)))
    assert script.returncode == 0, f"the rolling restart failed:\n{output}"
    assert during >= 5, f"only {during} chats were started while the restart ran"
    for prompt, thinking, result in results:
        expected = ("[thinking" + "." * chat_app.THINKING_DOTS + "]\n\n" if thinking else "") + \
            chat_app.pick_answer(prompt)
        assert result.status == 200, f"a chat ({prompt!r}) was refused: {result.status} {result.body[:200]!r}"
        assert not result.errors and result.ended_with_done, f"a chat ({prompt!r}) was cut: {result.errors}"
        assert result.text == expected, f"a chat ({prompt!r}) lost part of its answer: {result.text!r}"
    assert output.count("back in nginx") == 2 and "stopping anyway" not in output, output
    # The first instance still had its long answers when it left nginx: the drain waited for them.
    first_out = re.search(rf"127\.0\.0\.1:{ports[0]}: out of nginx; chats in flight: (\d+)", output)
    assert first_out and int(first_out[1]) >= 1, output
    assert not new_pids & old_pids and len(new_pids) == 2, "an instance was not restarted"


# --- the rolling restart stops, and says why, when going on would be unsafe ---------------


@contextlib.contextmanager
def fake_instance(in_flight: int) -> Iterator[str]:
    """An address whose /metrics always shows `in_flight` chats, as an instance that never drains."""

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"# TYPE chat_in_flight gauge\nchat_in_flight {in_flight}.0\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_rolling_restart_changes_nothing_unless_all_are_ready(step, step_module, tmp_path, capsys):
    rolling = step_module("rolling_restart")
    conf = tmp_path / "nginx.conf"
    shipped = (step.path / "nginx.conf").read_text()
    dead = free_port()
    conf.write_text(shipped.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{dead};"))
    before = conf.read_text()
    code = rolling.main(["--nginx-conf", str(conf), "--reload", "false",
                         "--pidfile", str(tmp_path / "chat-{port}.pid")])
    error = capsys.readouterr().err
    assert code == 1
    assert f"127.0.0.1:{dead} is not ready" in error and f"chat-{dead}.pid is missing" in error, error
    assert conf.read_text() == before, "nginx.conf was changed although nothing could be restarted"


def test_a_drain_gives_up_at_its_deadline_and_says_so(step, step_module, capsys):
    rolling = step_module("rolling_restart")
    with fake_instance(in_flight=2) as address:
        began = time.monotonic()
        rolling.drain(address, timeout=0.5)
        waited = time.monotonic() - began
    assert waited >= 0.5, "the drain did not wait for the open chats"
    assert f"{address}: chats still in flight after 0 s: 2; stopping anyway" in capsys.readouterr().out


def test_an_instance_without_the_in_flight_gauge_stops_the_restart(step, step_module):
    rolling = step_module("rolling_restart")
    with pytest.raises(rolling.RestartError, match="does not show chat_in_flight"):
        rolling.in_flight(f"127.0.0.1:{free_port()}")


def test_a_master_that_does_not_stop_stops_the_restart(step, step_module, tmp_path):
    rolling = step_module("rolling_restart")
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert stubborn.stdout.readline() == "ready\n"
        pidfile = tmp_path / "stubborn.pid"
        pidfile.write_text(str(stubborn.pid))
        with pytest.raises(rolling.RestartError, match=f"pid {stubborn.pid} did not stop"):
            rolling.stop(pidfile, timeout=0.5)
    finally:
        stubborn.kill()
        stubborn.wait()


def test_an_instance_that_does_not_come_back_stops_the_restart(step, step_module):
    rolling = step_module("rolling_restart")
    nowhere = f"127.0.0.1:{free_port()}"
    failed = rolling.start("exit 3")
    with pytest.raises(rolling.RestartError, match="the start command exited with code 3"):
        rolling.wait_ready(nowhere, failed, timeout=30)
    slow = rolling.start("sleep 30")
    try:
        with pytest.raises(rolling.RestartError, match="not all loaded within 1 s; left out of nginx"):
            rolling.wait_ready(nowhere, slow, timeout=1)
    finally:
        os.killpg(slow.pid, signal.SIGKILL)
        slow.wait()
