"""Look inside a running gunicorn server: its processes, their roles, sockets, memory and CPU.

Built on psutil, so it reads Linux and macOS alike. Every function skips a
process that has exited meanwhile (or that this user may not inspect), as a
server's tree changes under a test: a worker replaced while it is read
counts as gone.

Memory: PSS (proportional set size: a page shared by n processes counts
1/n in each) where the platform has it (Linux), else USS (the pages only
that process holds; macOS). `MEMORY_KIND` says which one `memory_kib`
measures by default, and every `ProcessInfo` names it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)

# The roles of a gunicorn 27 server's processes, as process_roles names them.
MASTER, HTTP, ARBITER, DIRTY = "master", "http", "arbiter", "dirty"


def _has_pss() -> bool:
    try:
        return hasattr(psutil.Process().memory_full_info(), "pss")
    except GONE:
        return False


# "pss" or "uss": what memory_kib counts unless told otherwise.
MEMORY_KIND = "pss" if _has_pss() else "uss"


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except GONE:
        return None


def process_tree(pid: int) -> list[int]:
    """The pid and all its descendants, the pid first; [] if it has exited."""
    process = _process(pid)
    if process is None:
        return []
    try:
        return [pid, *(child.pid for child in process.children(recursive=True))]
    except GONE:
        return []


def parent_pid(pid: int) -> int | None:
    """The pid's parent, or None if it has exited."""
    process = _process(pid)
    try:
        return process.ppid() if process else None
    except GONE:
        return None


def process_roles(master: int) -> dict[int, str]:
    """Each process of a gunicorn server's tree: MASTER, HTTP (worker), ARBITER or DIRTY (worker).

    The dirty arbiter is the master's child that has children of its own,
    the dirty workers; the master's other children are HTTP workers.
    """
    parents = {pid: parent for pid in process_tree(master) if (parent := parent_pid(pid)) is not None}
    has_children = set(parents.values())
    roles = {}
    for pid, parent in parents.items():
        if pid == master:
            roles[pid] = MASTER
        elif parent == master:
            roles[pid] = ARBITER if pid in has_children else HTTP
        else:
            roles[pid] = DIRTY
    return roles


def socket_count(pids: Iterable[int]) -> int:
    """How many sockets (TCP, UDP and Unix) these processes hold open."""
    count = 0
    for pid in pids:
        try:
            count += len(psutil.Process(pid).net_connections(kind="all"))
        except GONE:
            continue
    return count


def settled_socket_count(pids: Callable[[], list[int]], steady_reads: int = 5, timeout: float = 10.0) -> int:
    """The socket count once it has stopped moving: the same in `steady_reads` reads 0.1 s apart.

    Right after a response the server is still closing its side of it (the
    HTTP connection, the request's dirty client, the arbiter's end of that),
    so a count taken at once can be one or two too high.
    """
    deadline = time.monotonic() + timeout
    count, same = socket_count(pids()), 1
    while same < steady_reads and time.monotonic() < deadline:
        time.sleep(0.1)
        now = socket_count(pids())
        count, same = now, same + 1 if now == count else 1
    return count


def memory_kib(pids: Iterable[int], kind: str = MEMORY_KIND) -> int:
    """These processes' memory in KiB, summed: kind "pss", "uss" or "rss".

    RSS counts every shared page in full in each process; USS only the pages
    that process alone holds; PSS shares the shared pages out. A platform
    without PSS (macOS) raises ValueError for "pss": ask for MEMORY_KIND.
    """
    if kind not in ("pss", "uss", "rss"):
        raise ValueError(f"no memory kind {kind!r}: pss, uss or rss")
    if kind == "pss" and MEMORY_KIND != "pss":
        raise ValueError("this platform has no PSS: use MEMORY_KIND (USS)")
    total = 0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            info = process.memory_info() if kind == "rss" else process.memory_full_info()
        except GONE:
            continue
        total += getattr(info, kind) // 1024
    return total


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds each process has used so far (its threads too, not its children)."""
    used = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except GONE:
            continue
        used[pid] = times.user + times.system
    return used


def command_line(pid: int) -> list[str]:
    """The process's arguments ([] if it has exited)."""
    try:
        return psutil.Process(pid).cmdline()
    except GONE:
        return []


def thread_count(pid: int) -> int:
    """How many threads the process runs (0 if it has exited)."""
    try:
        return psutil.Process(pid).num_threads()
    except GONE:
        return 0


def started_at(pid: int) -> float | None:
    """When the process started (seconds since the epoch), or None if it has exited.

    With the pid, it names one process: a pid can be reused by a newer one.
    """
    try:
        return psutil.Process(pid).create_time()
    except GONE:
        return None


def alive(pid: int, started: float) -> bool:
    """True while the process that started at `started` runs (a zombie has ended)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except GONE:
        return False


def mapped_files(pid: int) -> list[str]:
    """The paths of the files the process has mapped: its executable, shared libraries, mmapped data.

    psutil's memory_maps() where the platform has it (Linux), else lsof
    (macOS), which lists mapped files as "txt" (macOS) or "mem" (Linux).
    """
    try:
        process = psutil.Process(pid)
        if hasattr(process, "memory_maps"):
            return [region.path for region in process.memory_maps(grouped=True) if region.path]
    except GONE:
        return []
    listing = subprocess.run(
        ["lsof", "-a", "-p", str(pid), "-d", "txt,mem", "-Fn"], capture_output=True, text=True, check=False
    ).stdout
    return [line[1:] for line in listing.splitlines() if line.startswith("n")]


def has_library(pid: int, fragment: str) -> bool:
    """True if a file the process has mapped has `fragment` in its path ("/uvloop/")."""
    return any(fragment in path for path in mapped_files(pid))


def listening_master(port: int) -> int | None:
    """The pid of the process that opened the TCP socket listening on this port, if one of ours did.

    Gunicorn's master opens it and its HTTP workers inherit it: from a
    process that holds it, climb to the oldest ancestor that holds it too.
    """
    try:
        listening = psutil.net_connections(kind="tcp")
        holder = next((c.pid for c in listening if c.pid and _is_listening(c, port)), None)
    except psutil.AccessDenied:
        # macOS lists every process's sockets to root only: ask each of ours.
        holder = next((pid for pid in psutil.pids() if _listens(pid, port)), None)
    if holder is None:
        return None
    while (parent := parent_pid(holder)) and _listens(parent, port):
        holder = parent
    return holder


def _listens(pid: int, port: int) -> bool:
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except GONE:
        return False
    return any(_is_listening(c, port) for c in connections)


def _is_listening(connection, port: int) -> bool:
    address = connection.laddr
    return connection.status == psutil.CONN_LISTEN and bool(address) and address.port == port


@dataclass(frozen=True)
class ProcessInfo:
    """One process of a server, as one look saw it."""

    pid: int
    parent: int | None
    role: str  # MASTER, HTTP, ARBITER or DIRTY
    memory_kib: int  # of kind memory_kind
    memory_kind: str  # "pss" or "uss" (MEMORY_KIND)
    sockets: int
    cpu_seconds: float
    command_line: list[str]


def snapshot(master: int) -> list[ProcessInfo]:
    """Every process of the server whose master is `master`, in tree order (the master first)."""
    roles = process_roles(master)
    cpu = cpu_seconds(roles)
    return [
        ProcessInfo(
            pid=pid,
            parent=parent_pid(pid),
            role=role,
            memory_kib=memory_kib([pid]),
            memory_kind=MEMORY_KIND,
            sockets=socket_count([pid]),
            cpu_seconds=cpu.get(pid, 0.0),
            command_line=command_line(pid),
        )
        for pid, role in roles.items()
    ]
