"""Bring back a model whose Python stub died, and keep readiness honest meanwhile.

tritonserver 2.51 does not restart a dead stub: its model fails every request with "Stub process ...
is not healthy" while ``/v2/health/ready`` keeps answering 200 (the python backend restarted stubs
until r24.05; python_backend PR #360 removed it and no release since has it back, see README
"Recovery"). The watchdog looks at the server's process group: each stub's argv names its model's
``model.py``, so a stub that disappears (or turns zombie) names the model to repair. It then asks the
repository API (``--model-control-mode=explicit``) to unload that model, which makes its ensembles and
the server's readiness go not-ready at once, and to load it again, which restarts all its instances
and the ensembles that use it.

Only models the server reports READY are repaired: one unloaded on purpose stays unloaded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("launcher")

STUB_BINARY = "triton_python_backend_stub"
# A dead stub is noticed within this interval; reading /proc for a few dozen processes costs ~1 ms.
CHECK_INTERVAL_SECS = 0.5
# Loading a big checkpoint can take minutes; the repository API answers only when it is done.
LOAD_TIMEOUT_SECS = 1800.0
# Between failed reload attempts of one model.
RETRY_SECS = 10.0


def _proc_stat(pid_dir: Path) -> tuple[str, int] | None:
    """(state, process group) of a /proc/<pid> entry, or None if it has gone."""
    try:
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = (pid_dir / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[2])


def live_stubs(pgid: int) -> dict[int, str]:
    """pid -> model name of every live (non-zombie) Python backend stub in process group ``pgid``."""
    stubs: dict[int, str] = {}
    for pid_dir in Path("/proc").glob("[0-9]*"):
        stat = _proc_stat(pid_dir)
        if stat is None or stat[1] != pgid or stat[0] == "Z":
            continue
        try:
            argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # argv: <stub> <repository>/<model>/<version>/model.py <shm region> ...
        if len(argv) > 1 and argv[0].endswith(STUB_BINARY.encode()):
            stubs[int(pid_dir.name)] = Path(argv[1].decode(errors="replace")).parent.parent.name
    return stubs


class RepositoryApi:
    """The few repository endpoints the watchdog uses, over plain HTTP."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _post(self, path: str, timeout: float) -> bytes:
        request = urllib.request.Request(f"{self.base_url}{path}", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def model_states(self) -> dict[str, str]:
        index = json.loads(self._post("/v2/repository/index", timeout=10.0))
        return {entry["name"]: entry.get("state", "") for entry in index}

    def unload(self, model: str) -> None:
        self._post(f"/v2/repository/models/{model}/unload", timeout=30.0)

    def load(self, model: str) -> None:
        self._post(f"/v2/repository/models/{model}/load", timeout=LOAD_TIMEOUT_SECS)


def _error_text(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}: {error.read().decode(errors='replace')[:300]}"
    return str(error)


class StubWatchdog:
    """Watches one running tritonserver's stubs in a background thread; ``stop()`` ends it."""

    def __init__(
        self,
        pgid: int,
        http_base_url: str,
        interval: float = CHECK_INTERVAL_SECS,
        on_recovered: Callable[[str, float], None] | None = None,
    ) -> None:
        self.pgid = pgid
        self.api = RepositoryApi(http_base_url)
        self.interval = interval
        self.on_recovered = on_recovered
        self.recoveries: list[tuple[str, float]] = []
        self._known: dict[str, set[int]] = {}
        self._next_try: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)

    def start(self) -> StubWatchdog:
        self._known = self._group_by_model(live_stubs(self.pgid))
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)

    @staticmethod
    def _group_by_model(stubs: dict[int, str]) -> dict[str, set[int]]:
        models: dict[str, set[int]] = {}
        for pid, model in stubs.items():
            models.setdefault(model, set()).add(pid)
        return models

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watchdog must outlive anything odd it meets
                logger.exception("watchdog check failed")

    def check(self) -> None:
        """One pass: repair every model that lost a stub since the last pass."""
        current = self._group_by_model(live_stubs(self.pgid))
        broken = [model for model, pids in self._known.items() if not pids <= current.get(model, set())]
        # Models loaded since (by the API or a reload) join the watch with their current stubs.
        for model, pids in current.items():
            if model not in broken:
                self._known[model] = pids
        for model in broken:
            if self._stop.is_set() or time.monotonic() < self._next_try.get(model, 0.0):
                continue
            self._repair(model)

    def _repair(self, model: str) -> None:
        started = time.monotonic()
        try:
            state = self.api.model_states().get(model, "")
        except (OSError, ValueError) as error:
            logger.warning("watchdog: cannot read the model states (%s); will retry", _error_text(error))
            return
        retrying = model in self._next_try
        if not (state == "READY" or (retrying and state in ("UNAVAILABLE", "UNLOADING"))):
            # LOADING: someone else is reloading it; UNAVAILABLE without a failed attempt of ours: the
            # operator unloaded it. Either way it is not ours to touch.
            self._known.pop(model, None)
            return
        logger.warning(
            "watchdog: a stub of model %s died; reloading it (readiness is false meanwhile)", model
        )
        try:
            if state == "READY":
                self.api.unload(model)
            self.api.load(model)
        except (OSError, ValueError) as error:
            self._next_try[model] = time.monotonic() + RETRY_SECS
            logger.error(
                "watchdog: reloading %s failed (%s); retrying in %.0f s",
                model,
                _error_text(error),
                RETRY_SECS,
            )
            return
        self._next_try.pop(model, None)
        self._known[model] = self._group_by_model(live_stubs(self.pgid)).get(model, set())
        seconds = time.monotonic() - started
        self.recoveries.append((model, seconds))
        logger.warning("watchdog: model %s serves again (reloaded in %.1f s)", model, seconds)
        if self.on_recovered:
            self.on_recovered(model, seconds)


def _find_server_pid() -> int:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "tritonserver":
                return int(comm.parent.name)
        except OSError:
            continue
    raise SystemExit("no tritonserver process found; pass --server-pid")


def main(argv: list[str] | None = None) -> int:
    """Watch a tritonserver started elsewhere (e.g. NGC's, in a container); it must run with
    ``--model-control-mode=explicit --load-model=*``. Ends when that server is gone."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.watchdog", description=main.__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's HTTP endpoint")
    parser.add_argument(
        "--server-pid", type=int, default=None, help="default: the process named tritonserver"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher: %(message)s")
    pid = args.server_pid or _find_server_pid()
    stat = _proc_stat(Path(f"/proc/{pid}"))
    if stat is None:
        raise SystemExit(f"no process {pid}")
    watchdog = StubWatchdog(stat[1], args.url).start()
    logger.info("watching the stubs of tritonserver pid %d (process group %d)", pid, stat[1])
    while (state := _proc_stat(Path(f"/proc/{pid}"))) is not None and state[0] != "Z":
        time.sleep(1.0)
    watchdog.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
