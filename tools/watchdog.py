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

2.51's unload returns before the model is unloaded, and with requests in flight on the dead stub it never
finishes: the old instances' other stubs keep running beside the reloaded ones. So after a reload only the
stubs that did not exist before it are watched, and old ones still running after ``OLD_STUB_GRACE_SECS``
are killed (before, their exit read as one more dead stub: a reload loop that ended in a wedged load).
Reloads of one model are capped (``MAX_RELOADS_PER_WINDOW``, with backoff), and each repair runs in its own
thread so that a load that hangs does not keep other models from being repaired.

After each reload every ensemble over the model (and each of its steps) must be READY again; one that is not
is loaded once more. What the watchdog cannot repair (the cap reached, a failed reload, an ensemble still not
ready) goes to ``on_escalate``: under the launcher, the supervisor restarts tritonserver, so that readiness
is false until the whole repository serves again. Without it (``python -m tools.watchdog`` beside a server
started elsewhere) the watchdog retries a failed reload and, past the cap, unloads the model.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tools.process_group import proc_stat

logger = logging.getLogger("launcher")

STUB_BINARY = "triton_python_backend_stub"
# A dead stub is noticed within this interval; reading /proc for a few dozen processes costs ~1 ms.
CHECK_INTERVAL_SECS = 0.5
# Loading a big checkpoint can take minutes; the repository API answers only when it is done.
LOAD_TIMEOUT_SECS = 1800.0
# Reloads of one model: the first is immediate, each further one within the window waits twice as long
# as the one before (2, 4, 8 s); past the cap the watchdog gives up on that model and says so (and the
# supervisor restarts tritonserver).
RELOAD_BACKOFF_FIRST_SECS = 2.0
MAX_RELOADS_PER_WINDOW = 4
RELOAD_WINDOW_SECS = 300.0
# An unloaded model's surviving stubs normally exit within ~3 s; ones still running this long after the
# reload began are killed.
OLD_STUB_GRACE_SECS = 10.0


def live_stubs(pgid: int) -> dict[int, str]:
    """pid -> model name of every live (non-zombie) Python backend stub in process group ``pgid``."""
    stubs: dict[int, str] = {}
    for pid_dir in Path("/proc").glob("[0-9]*"):
        stat = proc_stat(pid_dir)
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

    def ensemble_steps(self, model: str) -> tuple[str, ...] | None:
        """The models an ensemble's steps run, or None for a model that is not an ensemble."""
        with urllib.request.urlopen(f"{self.base_url}/v2/models/{model}/config", timeout=10.0) as response:
            config = json.loads(response.read())
        if config.get("platform") != "ensemble":
            return None
        steps = (config.get("ensemble_scheduling") or {}).get("step") or []
        return tuple(step["model_name"] for step in steps)

    def unload(self, model: str) -> None:
        self._post(f"/v2/repository/models/{model}/unload", timeout=30.0)

    def load(self, model: str) -> None:
        self._post(f"/v2/repository/models/{model}/load", timeout=LOAD_TIMEOUT_SECS)


def next_reload(
    attempts: list[float], now: float, max_reloads: int, window: float, backoff_first: float
) -> tuple[int, float] | None:
    """(reloads in the window so far, seconds to wait before the next one) for a model reloaded at the
    monotonic times ``attempts``, or None once ``max_reloads`` in ``window`` are spent: the watchdog gives up.
    The first reload is immediate; each further one in the window waits twice as long as the one before."""
    recent = [t for t in attempts if now - t < window]
    if len(recent) >= max_reloads:
        return None
    if not recent:
        return 0, 0.0
    due = recent[-1] + backoff_first * 2 ** (len(recent) - 1)
    return len(recent), max(0.0, due - now)


def ensembles_over(model: str, ensembles: dict[str, tuple[str, ...]]) -> set[str]:
    """The ensembles that run ``model``, directly or through another ensemble."""
    found: set[str] = set()
    frontier = {model}
    while frontier:
        frontier = {name for name, steps in ensembles.items() if frontier & set(steps)} - found
        found |= frontier
    return found


def unready_ensembles(
    reloaded: str, states: dict[str, str], ensembles: dict[str, tuple[str, ...]], repairing: set[str]
) -> list[str]:
    """The ensembles over ``reloaded`` that cannot serve after its reload: the ensemble or one of its steps
    is not READY in the repository index (``states``). An ensemble over a model that another repair is
    still reloading (``repairing``) is left to that repair's own check."""
    found = []
    for ensemble in sorted(ensembles_over(reloaded, ensembles)):
        steps = set(ensembles[ensemble])
        if steps & (repairing - {reloaded}):
            continue
        if any(states.get(name) != "READY" for name in (ensemble, *steps)):
            found.append(ensemble)
    return found


def _states_text(models: tuple[str, ...], states: dict[str, str]) -> str:
    return ", ".join(f"{model} {states.get(model) or 'unknown'}" for model in models)


def _error_text(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}: {error.read().decode(errors='replace')[:300]}"
    return str(error)


class StubWatchdog:
    """Watches one running tritonserver's stubs in a background thread; ``stop()`` ends it.

    Each repair runs in a thread of its own, one per model at a time, so a load that hangs (tritonserver
    can wedge one) never keeps the watchdog from repairing other models.

    ``on_escalate(reason)`` is called once, from a repair thread, with what the watchdog could not repair;
    the watchdog repairs nothing more after it (the caller restarts the server and starts a new watchdog).
    """

    def __init__(
        self,
        pgid: int,
        http_base_url: str,
        interval: float = CHECK_INTERVAL_SECS,
        on_recovered: Callable[[str, float], None] | None = None,
        on_escalate: Callable[[str], None] | None = None,
        max_reloads: int = MAX_RELOADS_PER_WINDOW,
    ) -> None:
        self.pgid = pgid
        self.api = RepositoryApi(http_base_url)
        self.interval = interval
        self.on_recovered = on_recovered
        self.on_escalate = on_escalate
        self.max_reloads = max_reloads
        self.recoveries: list[tuple[str, float]] = []
        self.escalated: str | None = None  # the reason given to on_escalate
        # Ensemble -> the models its steps run, learned while they are loaded (an unloaded ensemble has no
        # config to read); checked after each reload.
        self._ensembles: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()  # guards everything below; repairs run in their own threads
        self._known: dict[str, set[int]] = {}
        # Stubs of an unloaded generation of a model: they may outlive its reload, belong to no serving
        # instance, and their exit says nothing about the model.
        self._retired: set[int] = set()
        self._repairing: set[str] = set()
        # Model -> its stubs when the watchdog gave up on it; new stubs mean someone loaded it again.
        self._given_up: dict[str, set[int]] = {}
        self._attempts: dict[str, list[float]] = {}  # monotonic times of each model's reloads
        self._next_try: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)

    def start(self) -> StubWatchdog:
        self._known = self._group_by_model(live_stubs(self.pgid))
        try:
            self._learn_ensembles(self.api.model_states())
        except (OSError, ValueError) as error:  # a server not ready yet: learned at the first repair
            logger.info("watchdog: cannot read the model states yet (%s)", _error_text(error))
        self._thread.start()
        return self

    def _learn_ensembles(self, states: dict[str, str]) -> None:
        """Read the steps of every READY ensemble (one config request per model)."""
        learned = {}
        for model, state in states.items():
            if state != "READY":
                continue
            try:
                steps = self.api.ensemble_steps(model)
            except (OSError, ValueError, KeyError):
                continue  # unloaded meanwhile: what was learned before stays
            if steps is not None:
                learned[model] = steps
        with self._lock:
            self._ensembles.update(learned)

    def _escalate(self, reason: str) -> bool:
        """Hand ``reason`` to ``on_escalate``; False (nothing done) without one."""
        if self.on_escalate is None:
            return False
        if self._stop.is_set():
            return True  # the server is going anyway
        with self._lock:
            if self.escalated is not None:
                return True
            self.escalated = reason
        self.on_escalate(reason)  # which logs why
        return True

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

    def _current(self) -> dict[str, set[int]]:
        """The live stubs of serving generations, by model (retired stubs left out)."""
        stubs = live_stubs(self.pgid)
        with self._lock:
            self._retired &= stubs.keys()  # a pid that has gone can be reused by a new stub
            return self._group_by_model({pid: m for pid, m in stubs.items() if pid not in self._retired})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watchdog must outlive anything odd it meets
                logger.exception("watchdog check failed")

    def check(self) -> None:
        """One pass: start a repair of every model that lost a stub since the last pass."""
        if self.escalated is not None:
            return  # the server is being restarted
        current = self._current()
        now = time.monotonic()
        to_repair = []
        with self._lock:
            for model, pids in current.items():
                if model in self._given_up and not pids & self._given_up[model]:
                    del self._given_up[model]  # loaded again from outside: watch it afresh
                    self._known.pop(model, None)
                if model in self._repairing or model in self._given_up:
                    continue
                if model not in self._known or pids >= self._known[model]:
                    # Models loaded since (by the API or a reload) join the watch with their current stubs.
                    self._known[model] = pids
            for model, pids in self._known.items():
                if model in self._repairing or model in self._given_up:
                    continue
                if pids <= current.get(model, set()) or now < self._next_try.get(model, 0.0):
                    continue
                self._repairing.add(model)
                to_repair.append(model)
        for model in to_repair:
            if self._stop.is_set():
                break
            threading.Thread(
                target=self._repair_guarded, args=(model,), name=f"watchdog-repair-{model}", daemon=True
            ).start()

    def _repair_guarded(self, model: str) -> None:
        try:
            self._repair(model)
        except Exception:
            logger.exception("watchdog: repairing %s failed", model)
        finally:
            with self._lock:
                self._repairing.discard(model)

    def _reload_budget(self, model: str) -> tuple[int, float] | None:
        """(reloads of ``model`` in the window so far, seconds to wait before the next), or None once
        the cap is reached."""
        now = time.monotonic()
        with self._lock:
            attempts = self._attempts.get(model, [])
            self._attempts[model] = [t for t in attempts if now - t < RELOAD_WINDOW_SECS]
        return next_reload(attempts, now, self.max_reloads, RELOAD_WINDOW_SECS, RELOAD_BACKOFF_FIRST_SECS)

    def _give_up(self, model: str) -> None:
        with self._lock:
            self._given_up[model] = self._known.pop(model, set())
        if self._escalate(
            f"model {model} lost a stub again after {self.max_reloads} reload(s) in "
            f"{RELOAD_WINDOW_SECS:.0f} s"
        ):
            return
        logger.error(
            "watchdog: giving up on model %s after %d reloads in %.0f s (it keeps losing stubs): unloading "
            "it, so its requests and /v2/models/%s/ready fail plainly (tritonserver's own /v2/health/ready "
            "ignores unloaded models); restart tritonserver, or load it through the repository API, once "
            "the cause is fixed",
            model,
            self.max_reloads,
            RELOAD_WINDOW_SECS,
            model,
        )
        try:  # unloaded, it frees its stubs and fails each request at once instead of on a dead stub
            self.api.unload(model)
        except (OSError, ValueError) as error:
            logger.error("watchdog: unloading %s failed (%s)", model, _error_text(error))

    def _repair(self, model: str) -> None:
        budget = self._reload_budget(model)
        if budget is not None and budget[1] > 0:
            logger.warning(
                "watchdog: model %s lost a stub again (reload %d of at most %d in %.0f s); reloading it "
                "in %.0f s",
                model,
                budget[0] + 1,
                self.max_reloads,
                RELOAD_WINDOW_SECS,
                budget[1],
            )
            if self._stop.wait(budget[1]):
                return
        try:
            states = self.api.model_states()
            state = states.get(model, "")
        except (OSError, ValueError) as error:
            logger.warning("watchdog: cannot read the model states (%s); will retry", _error_text(error))
            return
        with self._lock:
            retrying = model in self._next_try
        if not (state == "READY" or (retrying and state in ("UNAVAILABLE", "UNLOADING"))):
            # LOADING: someone else is reloading it; UNAVAILABLE without a failed attempt of ours: the
            # operator unloaded it. Either way it is not ours to touch.
            with self._lock:
                self._known.pop(model, None)
            return
        if budget is None:
            self._give_up(model)
            return
        if self._stop.is_set() or self.escalated is not None:
            return  # the server is going; a restarted one may already use this port
        # Its ensembles are still READY (2.51 does not notice a dead stub): read their steps while it can.
        self._learn_ensembles(states)
        logger.warning(
            "watchdog: a stub of model %s died; reloading it (readiness is false meanwhile)", model
        )
        # Every stub of the model now alive belongs to the generation being unloaded.
        old = live_stubs_of(self.pgid, model)
        started = time.monotonic()
        with self._lock:
            self._attempts.setdefault(model, []).append(started)
        try:
            if state == "READY":
                self.api.unload(model)
            # tritonserver's unload returns at once and can stay UNLOADING for good (a request that was
            # in flight on the dead stub is never released), so the load does not wait for it: a load
            # starts new instances beside the unloading ones.
            self.api.load(model)
        except (OSError, ValueError) as error:
            if self._escalate(f"reloading model {model} failed ({_error_text(error)})"):
                return
            retry = RELOAD_BACKOFF_FIRST_SECS * 2 ** budget[0]
            with self._lock:
                self._next_try[model] = time.monotonic() + retry
            logger.error(
                "watchdog: reloading %s failed (%s); retrying in %.0f s", model, _error_text(error), retry
            )
            return
        seconds = time.monotonic() - started
        new = live_stubs_of(self.pgid, model) - old
        with self._lock:
            self._next_try.pop(model, None)
            self._retired |= old
            self._known[model] = new
            self._repairing.discard(model)  # watched again from here on, while the old stubs are reaped
            self.recoveries.append((model, seconds))
        logger.warning(
            "watchdog: model %s serves again (reloaded in %.1f s, %d new stubs)", model, seconds, len(new)
        )
        if self.on_recovered:
            self.on_recovered(model, seconds)
        self._check_ensembles(model)
        self._reap(model, old, started + OLD_STUB_GRACE_SECS)

    def _check_ensembles(self, model: str) -> None:
        """Every ensemble over the reloaded ``model`` must serve again: tritonserver reloads them with it,
        but one that failed to stays unloaded while /v2/health/ready says 200. Such an ensemble is loaded
        once more (which loads its missing steps too); if that does not bring it back, escalate."""
        with self._lock:
            ensembles = dict(self._ensembles)
        if not ensembles_over(model, ensembles) or not (unready := self._unready(model, ensembles)):
            return
        what = "; ".join(unready.values())
        logger.warning("watchdog: after reloading %s, not serving: %s; loading them again", model, what)
        for ensemble in unready:
            try:
                self.api.load(ensemble)
            except (OSError, ValueError) as error:
                logger.error("watchdog: loading %s failed (%s)", ensemble, _error_text(error))
        if not (unready := self._unready(model, ensembles)) or self._stop.is_set():
            return
        what = "; ".join(unready.values())
        reason = f"after reloading model {model} its ensembles still cannot serve: {what}"
        if not self._escalate(reason):
            logger.error("watchdog: %s", reason)

    def _unready(self, model: str, ensembles: dict[str, tuple[str, ...]]) -> dict[str, str]:
        """Each ensemble over ``model`` that cannot serve -> the states of its models."""
        try:
            states = self.api.model_states()
        except (OSError, ValueError) as error:
            logger.warning("watchdog: cannot read the model states (%s)", _error_text(error))
            return {}
        with self._lock:
            repairing = set(self._repairing)
        unready = unready_ensembles(model, states, ensembles, repairing)
        return {name: _states_text((name, *ensembles[name]), states) for name in unready}

    def _reap(self, model: str, old: set[int], deadline: float) -> None:
        """Old stubs still alive at ``deadline`` belong to an unload that will not finish (seen with
        requests in flight on the dead stub): kill them, or each would hold its memory for good."""
        while not self._stop.is_set():
            left = old & live_stubs_of(self.pgid, model)
            if not left:
                return
            if time.monotonic() >= deadline:
                break
            self._stop.wait(min(self.interval, max(0.0, deadline - time.monotonic())))
        else:
            return
        logger.warning(
            "watchdog: %d stub(s) of the unloaded %s still run %.0f s after its reload (pids %s); "
            "killing them",
            len(left),
            model,
            OLD_STUB_GRACE_SECS,
            ", ".join(map(str, sorted(left))),
        )
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def live_stubs_of(pgid: int, model: str) -> set[int]:
    return {pid for pid, name in live_stubs(pgid).items() if name == model}


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
    stat = proc_stat(Path(f"/proc/{pid}"))
    if stat is None:
        raise SystemExit(f"no process {pid}")
    watchdog = StubWatchdog(stat[1], args.url).start()
    logger.info("watching the stubs of tritonserver pid %d (process group %d)", pid, stat[1])
    while (state := proc_stat(Path(f"/proc/{pid}"))) is not None and state[0] != "Z":
        time.sleep(1.0)
    watchdog.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
