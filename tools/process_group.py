"""Signals to a whole process group, and waiting until none of it is left.

A server started with ``start_new_session=True`` leads a group of its own; its children (Triton's Python
backend stubs) stay in that group, so killing the group leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def proc_stat(pid_dir: Path) -> tuple[str, int] | None:
    """(state, process group) of a /proc/<pid> entry, or None if it has gone."""
    try:
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = (pid_dir / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[2])


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group.

    killpg(pgid, 0) alone also counts zombies: orphaned stubs are reparented to PID 1, which in a
    container may reap them seconds late, and a zombie holds no resources worth waiting for.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    states = (proc_stat(pid_dir) for pid_dir in proc.glob("[0-9]*"))
    return any(stat is not None and stat[1] == pgid and stat[0] != "Z" for stat in states)


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """True once no live process is left in the group; False if one still is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
