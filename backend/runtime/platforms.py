"""Choosing the torch device and dtype for a model instance: Ascend NPU, CUDA or CPU."""

from __future__ import annotations

import importlib.util
import logging

import torch

from backend.errors import ConfigError

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def npu_available() -> bool:
    """True when torch_npu imports and sees a device. torch_npu is imported only here, and only when it
    is installed: without Ascend's CANN runtime its import fails, which just means 'no NPU'."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401

        return bool(torch.npu.is_available())
    except Exception as error:  # a broken CANN install must not take the CPU/CUDA path down
        logger.warning("torch_npu is installed but unusable: %s", error)
        return False


def _device_count(kind: str) -> int:
    return torch.npu.device_count() if kind == "npu" else torch.cuda.device_count()


def resolve_device(requested: str, instance_index: int = 0, triton_gpu_id: int | None = None) -> torch.device:
    """`auto|cpu|cuda[:N]|npu[:N]` -> a torch device. Without an explicit index, instance k of a model
    uses device k modulo the device count (Triton knows no NPUs, so this is how instances spread), except
    that a KIND_GPU instance uses the GPU Triton gave it."""
    kind, _, index = requested.partition(":")
    if kind == "auto":
        kind = "npu" if npu_available() else "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "npu" and not npu_available():
        raise ConfigError("device 'npu' was asked for, but torch_npu is not installed or sees no NPU")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA GPU")
    count = _device_count(kind)
    if index:
        number = int(index)
    elif kind == "cuda" and triton_gpu_id is not None:
        number = triton_gpu_id
    else:
        number = instance_index % count
    if number >= count:
        raise ConfigError(f"device {kind}:{number} was asked for, but only {count} are visible")
    return torch.device(kind, number)


def share_cpu_threads(requested: int, instance_count: int) -> int:
    """torch's intra-op threads for one CPU instance: `requested`, or (0) the cores torch would use divided
    among the model's instances. Each instance is its own process, and torch's default (all cores each)
    oversubscribes the CPU: two instances of the tiny model on 2 cores served 43 text_200 requests/s at two
    threads each and 300 at one each. A single instance keeps torch's default."""
    threads = requested or (max(1, torch.get_num_threads() // instance_count) if instance_count > 1 else 0)
    if threads:
        torch.set_num_threads(threads)
        logger.info("torch uses %d CPU thread(s) in this instance (%d instance(s))", threads, instance_count)
    return torch.get_num_threads()


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on accelerators (fp16 on NPUs without bf16), fp32 on CPU."""
    if requested != "auto":
        return DTYPES[requested]
    if device.type == "cpu":
        return torch.float32
    if device.type == "npu" and not torch.npu.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def set_current(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "npu":
        torch.npu.set_device(device)
