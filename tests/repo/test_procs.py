"""harness.procs against a real server: the tree, the roles, memory, CPU, sockets, libraries."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from harness import procs
from harness.server import AUTH, start_server
from harness.sse import stream_chat
from harness.steps import find

DIRTY_WORKERS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Step 05 with two dirty workers: it has every role, and its HTTP worker runs uvloop."""
    with start_server(
        find("05").path,
        env={"DIRTY_WORKERS": str(DIRTY_WORKERS)},
        dirty_workers=DIRTY_WORKERS,
        log_dir=tmp_path_factory.mktemp("procs"),
    ) as live:
        # One chat, so that every process has done some work.
        with httpx.Client(base_url=live.base_url, timeout=30, headers=AUTH) as http:
            assert stream_chat(http, "hello").ended_with_done
        yield live


def test_the_tree_holds_the_master_arbiter_and_workers(server):
    tree = procs.process_tree(server.pid)
    assert tree[0] == server.pid, "the tree does not begin with the master"
    roles = procs.process_roles(server.pid)
    assert sorted(roles) == sorted(tree)
    assert sorted(roles.values()) == sorted(["master", "http", "arbiter", *["dirty"] * DIRTY_WORKERS])
    assert roles[server.pid] == procs.MASTER
    (arbiter,) = (pid for pid, role in roles.items() if role == procs.ARBITER)
    dirty = {pid for pid, role in roles.items() if role == procs.DIRTY}
    assert procs.parent_pid(arbiter) == server.pid
    assert {procs.parent_pid(pid) for pid in dirty} == {arbiter}, "the dirty workers are not the arbiter's"
    assert set(procs.process_tree(arbiter)) == {arbiter, *dirty}


def test_memory_cpu_and_sockets_are_measured(server):
    tree = procs.process_tree(server.pid)
    assert procs.MEMORY_KIND == ("pss" if sys.platform == "linux" else "uss")
    uss, measured, rss = (procs.memory_kib(tree, kind) for kind in ("uss", procs.MEMORY_KIND, "rss"))
    # A process's private pages are part of its share, and its share part of its resident set.
    assert 0 < uss <= measured <= rss, (uss, measured, rss)
    cpu = procs.cpu_seconds(tree)
    assert sorted(cpu) == sorted(tree)
    assert cpu[server.pid] > 0 and sum(cpu.values()) > 0
    # The master holds the listening socket; the arbiter and each dirty worker a Unix socket at least.
    assert procs.socket_count([server.pid]) >= 1
    assert procs.socket_count(tree) >= len(tree)
    with pytest.raises(ValueError, match="no memory kind"):
        procs.memory_kib(tree, "vss")


def test_a_socket_opened_in_the_server_is_counted(server):
    before = procs.settled_socket_count(server.pids)
    with httpx.Client(base_url=server.base_url, timeout=10, headers=AUTH) as http:
        assert http.get("/health").status_code == 200
        # The keep-alive connection is one more socket in the HTTP worker.
        assert procs.socket_count(server.pids()) > before
    assert procs.settled_socket_count(server.pids) == before


def test_the_snapshot_names_each_process(server):
    looks = procs.snapshot(server.pid)
    assert [look.pid for look in looks] == procs.process_tree(server.pid)
    for look in looks:
        assert look.memory_kib > 0 and look.memory_kind == procs.MEMORY_KIND, look
        assert look.cpu_seconds >= 0 and look.sockets >= 1, look
        assert "gunicorn" in look.command_line and "main:app" in look.command_line, look
    assert {look.role for look in looks} == {"master", "http", "arbiter", "dirty"}


def test_only_the_http_worker_has_uvloop_loaded(server):
    roles = procs.process_roles(server.pid)
    assert [roles[pid] for pid in roles if procs.has_library(pid, "/uvloop/")] == ["http"]
    assert procs.has_library(server.pid, "libc")


def test_without_memory_maps_lsof_names_the_libraries(server, monkeypatch, in_ci):
    """macOS's psutil has no memory_maps(): has_library asks lsof instead."""
    if not shutil.which("lsof") and not in_ci:
        pytest.skip("lsof is not installed")
    monkeypatch.delattr(psutil.Process, "memory_maps")
    roles = procs.process_roles(server.pid)
    assert [roles[pid] for pid in roles if procs.has_library(pid, "/uvloop/")] == ["http"]


def test_the_listening_master_is_found_from_the_port(server):
    assert procs.listening_master(server.port) == server.pid


SLEEPER = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"


def test_a_process_is_known_by_its_start_and_ends():
    child = subprocess.Popen([sys.executable, "-c", SLEEPER])
    try:
        started = procs.started_at(child.pid)
        assert started is not None and procs.alive(child.pid, started)
        assert not procs.alive(child.pid, started + 1), "another start time taken for this process"
        assert_polled(lambda: procs.thread_count(child.pid) == 2)
        os.kill(child.pid, signal.SIGKILL)
        # Killed but not yet reaped: a zombie, which counts as ended.
        assert_polled(lambda: not procs.alive(child.pid, started))
    finally:
        child.kill()
        child.wait()
    for measure in (procs.process_tree, procs.command_line, procs.thread_count, procs.started_at):
        assert not measure(child.pid), f"{measure.__name__} of a process that has exited"
    assert procs.socket_count([child.pid]) == 0 and procs.memory_kib([child.pid]) == 0
    assert procs.cpu_seconds([child.pid]) == {} and not procs.has_library(child.pid, "libc")


def assert_polled(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not true after {timeout:.0f} s"
        time.sleep(0.05)
