"""Signals to a whole process group, waiting until none of it is left, and children that die with their
parent.

A server started with ``start_new_session=True`` leads a group of its own; its children (Triton's Python
backend stubs) stay in that group, so killing the group leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

# linux/prctl.h
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process dies, even by
    SIGKILL, which no handler of ours sees (a process manager's last resort). None off Linux.

    The kernel sends it when the *thread* that forked the child ends, not the process: call Popen from a
    thread that lives as long as the process (the launcher forks from its main thread only). The setting
    survives exec, and a new session (``start_new_session``) does not clear it.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    # Resolved before the fork: the child only calls into an already loaded libc.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    number = ctypes.c_ulong(int(sig))
    zero = ctypes.c_ulong(0)

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, number, zero, zero, zero) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died between fork and prctl: the signal will not come
            os.kill(os.getpid(), sig)

    return arm


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
