"""Cross-check deploy.gotemplate against Go: ``python -m deploy.crosscheck`` (needs go; not in make test).

Builds deploy/helmcheck/main.go (Go's text/template + sprig + Helm's include/toYaml) and renders every
shipped variant plus two that take the optional branches with both, then compares the files byte for byte
(surrounding whitespace aside). Debian: apt-get install golang-go golang-github-masterminds-sprig-dev
golang-github-ghodss-yaml-dev.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from deploy.render import CHART, DEPLOY, REPO, VARIANTS, merge, render_chart, variant_values

EVERY_BRANCH = {
    "responseCache": {"backend": "redis", "redis": {"passwordSecret": "redis-auth"}},
    "weights": {"fetch": {"tokenSecret": "hf"}},
    "autoscaling": {"enabled": False},
    "gateway": {"enabled": True, "mode": "deployment", "apiKeySecret": "gateway-key"},
    "triton": {"extraArgs": ["--log-verbose=1"]},
    "nodeSelector": {"pool": "gpu"},
    "imagePullSecrets": [{"name": "registry"}],
    "pipelines": ["reranker"],
}


def build(binary: Path) -> Path:
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": os.environ.get("GOPATH", "/usr/share/gocode")}
    env.setdefault("GOCACHE", str(binary.parent / "gocache"))
    subprocess.run(
        ["go", "build", "-o", str(binary), str(DEPLOY / "helmcheck" / "main.go")], check=True, env=env
    )
    return binary


def go_render(binary: Path, values: dict[str, Any]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as scratch:
        values_file, out = Path(scratch) / "values.json", Path(scratch) / "out"
        values_file.write_text(json.dumps(values))
        out.mkdir()
        subprocess.run([str(binary), str(CHART), str(values_file), str(out)], check=True)
        return {path.name: path.read_text() for path in out.iterdir() if path.read_text().strip()}


def main() -> int:
    binary = build(REPO / "build" / "crosscheck" / "helmcheck")
    cases = [(variant.name, variant_values(variant)) for variant in VARIANTS]
    cases.append(("every-branch", merge(variant_values(VARIANTS[-1]), EVERY_BRANCH)))
    cases.append(
        ("weights-claim", merge(variant_values(VARIANTS[0]), {"weights": {"existingClaim": "weights"}}))
    )
    differences = 0
    for name, values in cases:
        go, ours = go_render(binary, values), render_chart(values)
        for file in sorted(set(go) | set(ours)):
            a, b = go.get(file, "").strip(), ours.get(file, "").strip()
            if a != b:
                differences += 1
                diff = difflib.unified_diff(a.splitlines(True), b.splitlines(True), "go", "deploy.gotemplate")
                print(f"{name}/{file}:\n{''.join(list(diff)[:40])}")
    print(f"{len(cases)} value sets, {differences} files differ")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
