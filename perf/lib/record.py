"""The one scaffold of every perf entry point: where its results go, and what each results file says about
the run besides its numbers (the command that reproduces it, the commit, the host, when, and how loaded the
machine was before and after: on shared cores other work is the first thing to rule out)."""

from __future__ import annotations

import datetime
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perf.lib.host import busy_processes, git_commit, host_tag, todays_results_dir, write_json


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_1m() -> float:
    return round(os.getloadavg()[0], 2)


class Experiment:
    """Started when an entry point has parsed its arguments; `report(...)` is its results with the run's
    provenance in front, `write_json` / `provenance` put them into its results directory."""

    def __init__(
        self,
        module: str,
        argv: Sequence[str] | None,
        out: Path | None = None,
        *,
        host: str | None = None,
        busy: bool = True,
    ) -> None:
        args = list(sys.argv[1:] if argv is None else argv)
        self.command = shlex.join(["python", "-m", module, *args])
        self.host = host or host_tag()
        self.out = out if out is not None else todays_results_dir(self.host)
        self.out.mkdir(parents=True, exist_ok=True)
        self.header: dict[str, Any] = {
            "command": self.command,
            "commit": git_commit(),
            "host": self.host,
            "cores": os.cpu_count(),
            "started": now(),
            "load_before": load_1m(),
            "busy_at_start": busy_processes() if busy else [],
        }

    def report(self, **results: Any) -> dict[str, Any]:
        """The results with the run's provenance first and the load it ended with."""
        return {**self.header, "finished": now(), "load_after": load_1m(), **results}

    def write_json(self, name: str, report: dict[str, Any]) -> Path:
        path = self.out / name
        write_json(path, report)
        return path

    def write_markdown(self, name: str, lines: list[str], echo: bool = False) -> Path:
        """The report's markdown (`echo`: printed too, for the drills' consoles)."""
        path = self.out / name
        text = "\n".join(lines).rstrip("\n") + "\n"
        path.write_text(text)
        if echo:
            print(text, end="", flush=True)
        return path

    def heading(self, title: str, report: dict[str, Any]) -> list[str]:
        """The start of a report's markdown: its title, then the provenance line."""
        return [f"# {title}", "", self.provenance(report), ""]

    def provenance(self, report: dict[str, Any] | None = None) -> str:
        """One markdown line: the command, the commit, the host, the load around the run."""
        after = (report or {}).get("load_after", load_1m())
        busy = ", ".join(self.header["busy_at_start"]) or "nothing else"
        return (
            f"`{self.command}` at commit {self.header['commit']} on {self.host} "
            f"({self.header['cores']} cores), {self.header['started']}; load average "
            f"{self.header['load_before']} before, {after} after; busy at the start: {busy}."
        )
