"""Restart the instances behind nginx one at a time, without cutting a stream.

On SIGTERM, gunicorn 27.0.1 stops the dirty arbiter first, and that cuts
every stream still open. So each instance in turn is taken out of nginx
(marked `down`, then nginx reloads), left to finish its chats (the
chat_in_flight gauge of its /metrics), and only then stopped with SIGTERM,
started again and, once every model worker has loaded (GET /ready), put back.

Run it in the step's folder: the instances are the `server` lines of
nginx.conf's upstream. Each one writes a pid file (gunicorn's --pid), and
--start is the command that starts one, the one your deployment runs;
{port} stands for the instance's port in --start and --pidfile.
"""

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

START = (
    "exec gunicorn -c gunicorn_conf.py --bind 127.0.0.1:{port} --name chat-{port}"
    " --pid chat-{port}.pid main:app >> chat-{port}.log 2>&1"
)
RELOAD = "nginx -p . -c nginx.conf -e stderr -s reload"
# A server line of an upstream: its address, and whether it is marked down.
SERVER_LINE = re.compile(r"^(?P<indent>\s*)server\s+(?P<address>[\w.:-]+)(\s+down)?\s*;", re.MULTILINE)
POLL_EVERY = 0.2


class RestartError(Exception):
    """The restart cannot go on safely: it stops, and says why."""


def get(address: str, path: str) -> tuple[int, bytes]:
    """GET a path of an instance: its status and body; status 0 if nothing answers."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        connection.close()


def models_loaded(address: str) -> tuple[int, int] | None:
    """(loaded, workers) from GET /ready once it answers 200, else None."""
    status, body = get(address, "/ready")
    if status != 200:
        return None
    ready = json.loads(body)
    return ready["loaded"], ready["workers"]


def in_flight(address: str) -> int:
    """The chats an instance is answering or has waiting in line."""
    _, body = get(address, "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "chat_in_flight":
            return int(sum(sample.value for sample in family.samples))
    raise RestartError(f"{address}: its /metrics does not show chat_in_flight")


class Nginx:
    """The upstream's servers in nginx.conf, marked down or up, applied by a reload."""

    def __init__(self, conf: Path, reload: str, settle: float):
        self.conf = conf
        self.reload = reload
        self.settle = settle

    def addresses(self) -> list[str]:
        return [line["address"] for line in SERVER_LINE.finditer(self.conf.read_text())]

    def mark(self, address: str, down: bool) -> None:
        def rewrite(line: re.Match) -> str:
            if line["address"] != address:
                return line[0]
            return f"{line['indent']}server {address}{' down' if down else ''};"

        self.conf.write_text(SERVER_LINE.sub(rewrite, self.conf.read_text()))
        subprocess.run(self.reload, shell=True, check=True, cwd=self.conf.parent)
        # A reload only signals nginx, which then starts workers with the new
        # configuration: give it a moment before counting on the change.
        time.sleep(self.settle)


def drain(address: str, timeout: float) -> None:
    """Wait until the instance has no chat left, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    left = in_flight(address)
    while left and time.monotonic() < deadline:
        time.sleep(POLL_EVERY)
        left = in_flight(address)
    if left:
        print(f"{address}: chats still in flight after {timeout:.0f} s: {left}; stopping anyway", flush=True)


def stop(pidfile: Path, timeout: float) -> int:
    """SIGTERM the master whose pid the file holds, and wait until it has exited."""
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    # Gunicorn removes its pid file as it exits, once its workers have stopped.
    while pidfile.exists():
        if time.monotonic() > deadline:
            raise RestartError(f"pid {pid} did not stop within {timeout:.0f} s")
        time.sleep(POLL_EVERY)
    return pid


def start(command: str) -> subprocess.Popen:
    """Run a start command in a session of its own, so that the server outlives this script.

    The command finds the programs of the environment this script runs in, as
    in an activated virtualenv.
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.Popen(command, shell=True, start_new_session=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PATH": path})


def wait_ready(address: str, started: subprocess.Popen, timeout: float) -> tuple[int, int]:
    """Wait until every model worker of a started instance has loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loaded = models_loaded(address)
        if loaded and loaded[0] >= loaded[1]:
            return loaded
        # A start command may hand the server over and exit 0; another code is a failure.
        if started.poll():
            raise RestartError(f"{address}: the start command exited with code {started.returncode}")
        time.sleep(POLL_EVERY)
    raise RestartError(f"{address}: its models were not all loaded within {timeout:.0f} s; left out of nginx")


class RollingRestart:
    def __init__(self, options: argparse.Namespace):
        self.options = options
        self.nginx = Nginx(Path(options.nginx_conf).resolve(), options.reload, options.settle)

    def port(self, address: str) -> str:
        return address.rsplit(":", 1)[1]

    def pidfile(self, address: str) -> Path:
        return Path(self.options.pidfile.format(port=self.port(address)))

    def run(self) -> int:
        addresses = self.nginx.addresses()
        # Each instance is out in turn: the others must carry the traffic meanwhile.
        problems = [f"{address} is not ready" for address in addresses if not models_loaded(address)]
        problems += [f"{self.pidfile(a)} is missing" for a in addresses if not self.pidfile(a).is_file()]
        if problems:
            raise RestartError(f"nothing was restarted: {'; '.join(problems)}")
        for address in addresses:
            self.restart(address)
        return len(addresses)

    def restart(self, address: str) -> None:
        def say(text: str) -> None:
            print(f"{address}: {text}", flush=True)

        options = self.options
        began = time.monotonic()
        self.nginx.mark(address, down=True)
        say(f"out of nginx; chats in flight: {in_flight(address)}")
        drain(address, options.drain_timeout)
        pid = stop(self.pidfile(address), options.stop_timeout)
        say(f"drained and stopped (pid {pid}) in {time.monotonic() - began:.1f} s")
        began = time.monotonic()
        started = start(options.start.format(port=self.port(address)))
        loaded, workers = wait_ready(address, started, options.ready_timeout)
        say(f"started again: {loaded} of {workers} model workers loaded in {time.monotonic() - began:.1f} s")
        self.nginx.mark(address, down=False)
        say("back in nginx")


class HelpFormat(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormat)
    option = parser.add_argument
    option("--nginx-conf", default="nginx.conf", help="nginx's configuration, with the upstream")
    option("--reload", default=RELOAD, help="the command that makes nginx read it again")
    option("--start", default=START, help="the command that starts an instance")
    option("--pidfile", default="chat-{port}.pid", help="the pid file of an instance")
    option("--drain-timeout", type=float, default=60, help="seconds to wait for open chats")
    option("--stop-timeout", type=float, default=40, help="seconds to wait for a master to exit")
    option("--ready-timeout", type=float, default=120, help="seconds to wait for the models to load")
    option("--settle", type=float, default=1, help="seconds nginx gets to apply a reload")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    began = time.monotonic()
    try:
        count = RollingRestart(parse(argv)).run()
    except RestartError as exc:
        print(f"rolling restart stopped: {exc}", file=sys.stderr)
        return 1
    print(f"restarted {count} instances, one at a time, in {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
