"""What the gateway knows of each ensemble, read once from its Triton config and its preprocess step's,
and what it refuses before calling one that lacks an input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, Kind
from gateway.items import Item


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs to know about one ensemble."""

    name: str
    max_batch_size: int
    inputs: frozenset[str]
    outputs: frozenset[str]
    max_length: int | None = None  # the preprocess step's max_length parameter
    model_path: str | None = None  # the preprocess step's model_path parameter (None = its default)


def model_info(name: str, summary: dict[str, Any], preprocess: dict[str, Any]) -> ModelInfo:
    """``summary``: the ensemble's ``model_summary``; ``preprocess``: its first step's config."""
    max_length = _parameter(preprocess, "max_length")
    return ModelInfo(
        name=name,
        max_batch_size=summary["max_batch_size"],
        inputs=frozenset(tensor.name for tensor in summary["inputs"]),
        outputs=frozenset(tensor.name for tensor in summary["outputs"]),
        max_length=int(max_length) if max_length else None,
        model_path=_parameter(preprocess, "model_path"),
    )


def _parameter(config: dict[str, Any], name: str) -> str | None:
    value = config.get("parameters", {}).get(name, {}).get("string_value", "")
    return value or None


def check_inputs(items: Sequence[Item], info: ModelInfo) -> None:
    """Raw and token-id items need the ensemble's RAW and TOKEN_IDS inputs."""
    needs = {"RAW"} if any(item.raw for item in items) else set()
    if any(item.token_ids is not None for item in items):
        needs.add("TOKEN_IDS")
    missing = sorted(needs - info.inputs)
    if missing:
        raise GatewayError(
            Kind.UNSUPPORTED,
            f"the Triton model {info.name} has no {', '.join(missing)} input: input_format 'vllm' "
            "needs a model repository that has it",
        )
