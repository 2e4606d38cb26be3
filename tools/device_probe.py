"""``python -m tools.device_probe DEVICE``: can this venv's torch serve on DEVICE? One JSON line.

Run by the preflight check (tools.preflight) in a child process, with the venv the backend stubs run in,
so that the launcher never imports torch and a crashing accelerator runtime (torch_npu without CANN) cannot
take it down. Whether the device exists is the backend's own answer: ``backend.runtime.platforms`` resolves
it exactly as a model instance would. Before that, torch's version file says (without importing torch)
whether torch is there at all and whether it is a CUDA build, and the installed packages whether torch_npu
is, so that the usual answers on a CPU host cost no torch import.

The line holds ``torch`` (its version) and ``cuda_build`` (None for a CPU build), and then one of
``platform`` (the device resolved: it can serve), ``refused`` (the platforms' reason it cannot),
``error`` (torch_npu missing or broken) or ``crash`` (torch itself is missing).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from pathlib import Path

# repr() of the CPU's platform (backend.runtime.platforms.Platform), the answer for a CPU.
CPU_PLATFORM = "Platform(cpu)"


def _version_file() -> dict[str, str | None] | None:
    """torch's version and CUDA build from torch/version.py, or None when torch is not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    text = (Path(spec.origin).parent / "version.py").read_text()
    version = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", text, re.M)
    cuda = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)", text, re.M)
    return {"torch": version.group(1) if version else "", "cuda_build": cuda.group(1) if cuda else None}


class _Warnings(logging.Handler):
    """Keeps what the platforms module warns about (a torch_npu that imports but is unusable)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def probe(device: str) -> dict[str, object]:
    installed = _version_file()
    if installed is None:
        return {"crash": "torch is not installed in this venv (make setup installs it)"}
    answer: dict[str, object] = dict(installed)
    kind = device.partition(":")[0]
    if kind == "cuda" and not installed["cuda_build"]:
        return answer  # a CPU build: no CUDA device, whatever the host has
    if kind == "npu" and importlib.util.find_spec("torch_npu") is None:
        return {**answer, "error": "torch_npu is not installed"}
    if kind == "auto" and not installed["cuda_build"] and importlib.util.find_spec("torch_npu") is None:
        return {**answer, "platform": CPU_PLATFORM}  # what auto resolves to with neither

    from backend.errors import ConfigError
    from backend.runtime import platforms

    warnings = _Warnings()
    platforms.logger.addHandler(warnings)
    platforms.logger.propagate = False  # the answer is the JSON line, not a log on stderr
    try:
        platform = platforms.resolve_platform(device)
    except ConfigError as error:
        if kind == "npu" and warnings.messages:
            return {**answer, "error": warnings.messages[0].splitlines()[0][:200]}
        return {**answer, "refused": str(error)}
    except ValueError:  # int() of an index that is not a number
        return {**answer, "refused": f"device {device!r}: the index after ':' must be a number"}
    return {**answer, "platform": repr(platform)}


def main(argv: list[str] | None = None) -> int:
    device = (sys.argv[1:] if argv is None else argv)[0]
    print(json.dumps(probe(device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
