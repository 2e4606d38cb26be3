"""The addresses servers bind to: the defaults of ``make serve``, free ports for test and perf servers, and
where a local client reaches a server bound to a wildcard address."""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Iterable
from pathlib import Path

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
# `make serve` answers only on this machine; containers pass --host 0.0.0.0 (README "Operations").
DEFAULT_HOST = "127.0.0.1"
# free_ports picks test and perf servers' ports from here up to the kernel's ephemeral range.
FREE_PORT_LOWEST = 20000


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open together so none repeats), from below the
    kernel's ephemeral range where it leaves room: a port the kernel hands out (bind to 0) can be taken by
    any program's outgoing connection while the server on it is restarted (the supervisor restarts on the
    same ports; seen: gRPC "Address already in use" for 3 min of restarts while load tests ran)."""
    low = ephemeral_port_range()[0]
    candidates = list(range(FREE_PORT_LOWEST, low))
    random.shuffle(candidates)
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in [*candidates[: 64 * n], *[0] * n]:  # 0: the kernel's choice, should all those be taken
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(sock.getsockname()[1])
            if len(ports) == n:
                return ports
        raise OSError(f"no {n} free TCP ports on 127.0.0.1")


def free_port() -> int:
    return free_ports(1)[0]


def connect_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host`` (a wildcard address means loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


# /proc/net/tcp's state column for a listening socket.
TCP_LISTEN = "0A"
COMMAND_CHARS = 160


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on TCP ``port`` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == TCP_LISTEN and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(fields[9])
    return inodes


def port_holders(port: int, among: Iterable[int] | None = None) -> list[tuple[int, str]]:
    """(pid, command line) of each process (of ``among``, default all) with a socket listening on TCP
    ``port``, as far as /proc lets this user see (another user's processes hide their file descriptors)."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return []
    pid_dirs = Path("/proc").glob("[0-9]*") if among is None else (Path(f"/proc/{pid}") for pid in among)
    holders = []
    for pid_dir in pid_dirs:
        try:
            links = set()
            for fd in (pid_dir / "fd").iterdir():
                with contextlib.suppress(OSError):  # closed meanwhile
                    links.add(os.readlink(fd))
            if links & wanted:
                command = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                holders.append((int(pid_dir.name), command.strip()))
        except OSError:  # gone, or not ours to read
            continue
    return sorted(holders)


def describe_port_holders(port: int) -> str:
    """ "pid 123 (tritonserver --model-repository ...)" for each process listening on ``port``, on one line;
    "" if none can be seen."""
    described = []
    for pid, command in port_holders(port):
        command = " ".join(command.split())
        if len(command) > COMMAND_CHARS:
            command = command[:COMMAND_CHARS] + "..."
        described.append(f"pid {pid} ({command})")
    return ", ".join(described)
