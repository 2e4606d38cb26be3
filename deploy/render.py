"""Render the Helm chart for every shipped variant without helm: ``python -m deploy.render [--out DIR]``.

A variant is the chart's values.yaml overlaid with values/<accelerator>.yaml, values/<size>.yaml and, for
gateway variants, values/gateway.yaml, in that order, exactly the files a user passes to ``helm install -f``.
Each variant's manifests go to ``<out>/<variant>/<template>.yaml`` (default ``build/manifests``); the KServe
and Prometheus-adapter files are copied next to them as ``<out>/kserve/`` and ``<out>/prometheus-adapter/``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.gotemplate import helm_numbers, render_templates

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
CHART = DEPLOY / "helm" / "qwen3-vl"
DEFAULT_OUT = REPO / "build" / "manifests"
RELEASE_NAME = "qwen3vl"
SIZES = ("2b", "8b")
ACCELERATORS = ("cuda", "ascend", "cpu")


@dataclass(frozen=True)
class Variant:
    size: str
    accelerator: str
    gateway: str | None = None  # None | "sidecar" | "deployment"

    @property
    def name(self) -> str:
        suffix = (
            "" if self.gateway is None else "-gateway" if self.gateway == "sidecar" else "-gateway-deployment"
        )
        return f"{self.size}-{self.accelerator}{suffix}"

    @property
    def values_files(self) -> list[Path]:
        files = [CHART / "values" / f"{self.accelerator}.yaml", CHART / "values" / f"{self.size}.yaml"]
        if self.gateway:
            files.append(CHART / "values" / "gateway.yaml")
        return files

    @property
    def overrides(self) -> dict[str, Any]:
        """What `--set` would add: the gateway off (it is on by default) or as its own Deployment."""
        if self.gateway is None:
            return {"gateway": {"enabled": False}}
        return {"gateway": {"mode": "deployment"}} if self.gateway == "deployment" else {}


# 2B/8B x CUDA/Ascend/CPU, each with and without the gateway sidecar, plus the gateway as its own Deployment.
VARIANTS: tuple[Variant, ...] = (
    *(
        Variant(size, accelerator, gateway)
        for size in SIZES
        for accelerator in ACCELERATORS
        for gateway in (None, "sidecar")
    ),
    Variant("8b", "cuda", "deployment"),
)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps merge key by key, everything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) or {}


def variant_values(variant: Variant) -> dict[str, Any]:
    values = load_yaml(CHART / "values.yaml")
    for path in variant.values_files:
        values = merge(values, load_yaml(path))
    return merge(values, variant.overrides)


def chart_templates() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted((CHART / "templates").iterdir()) if path.is_file()}


def render_variant(
    variant: Variant, release: str = RELEASE_NAME, namespace: str = "default"
) -> dict[str, str]:
    """Template file name -> rendered text (files that render to nothing are left out)."""
    return render_chart(variant_values(variant), release, namespace)


def render_chart(
    values: dict[str, Any], release: str = RELEASE_NAME, namespace: str = "default"
) -> dict[str, str]:
    """The chart rendered with these complete (already merged) values, as `helm template` would."""
    chart = load_yaml(CHART / "Chart.yaml")
    context = {
        "Values": helm_numbers(values),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
    }
    rendered = render_templates(chart_templates(), context)
    return {name: text.strip() + "\n" for name, text in rendered.items() if text.strip()}


def documents(text: str) -> list[dict[str, Any]]:
    """The YAML documents of one rendered file (empty ones dropped)."""
    return [document for document in yaml.safe_load_all(text) if document]


def write_all(out: Path = DEFAULT_OUT) -> list[Path]:
    """Render every variant into out/<variant>/ (replacing what was there) and copy the static manifests."""
    if out.exists():
        shutil.rmtree(out)
    written = []
    for variant in VARIANTS:
        directory = out / variant.name
        directory.mkdir(parents=True)
        for name, text in render_variant(variant).items():
            path = directory / name
            path.write_text(text)
            written.append(path)
    for static in ("kserve", "prometheus-adapter"):
        shutil.copytree(DEPLOY / static, out / static)
        written.extend(sorted((out / static).glob("*.yaml")))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.render", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    written = write_all(args.out)
    print(f"{len(written)} manifests for {len(VARIANTS)} variants in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
