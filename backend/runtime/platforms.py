"""One object per device kind (cpu / cuda / npu): every device-specific decision is asked of it.

Device and dtype choice, whether compiling is wanted, model changes a device needs (the patch-embedding swap
on Ascend), synchronise / empty-cache, CPU thread sharing, out-of-memory detection and the device's name for
perf reports. Nothing outside this module asks `device.type == ...`.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

from backend.errors import ConfigError

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
KINDS = ("cpu", "cuda", "npu")


def _npu() -> Any:
    """torch.npu, which importing torch_npu adds to torch (torch's own type stubs have no such module)."""
    return torch.npu  # type: ignore[attr-defined]  # present once torch_npu is imported


def npu_available() -> bool:
    """True when torch_npu imports and sees a device. torch_npu is imported only here, and only when it
    is installed: without Ascend's CANN runtime its import fails, which just means 'no NPU'."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401

        return bool(_npu().is_available())
    except Exception as error:  # a broken CANN install must not take the CPU/CUDA path down
        logger.warning("torch_npu is installed but unusable: %s", error)
        return False


def instance_cpu_threads(requested: int, instance_count: int) -> int:
    """The CPU threads one instance of the model has: `requested`, or (0) the cores torch would use divided
    among the model's instances."""
    return requested or max(1, torch.get_num_threads() // max(1, instance_count))


def share_cpu_threads(requested: int, instance_count: int, lanes: int = 1) -> int:
    """torch's intra-op threads for one forward on the CPU: the instance's threads (instance_cpu_threads)
    divided among the `lanes` forwards it runs at once. Each instance is its own process, and torch's
    default (all cores each) oversubscribes the CPU: two instances of the tiny model on 2 cores served 43
    text_200 requests/s at two threads each and 300 at one each. A single instance with one lane and no
    requested number keeps torch's default."""
    if requested or instance_count > 1 or lanes > 1:
        threads = max(1, instance_cpu_threads(requested, instance_count) // lanes)
        torch.set_num_threads(threads)
        logger.info(
            "torch uses %d CPU thread(s) per forward, %d forward(s) at once, in this instance (%d in all)",
            threads,
            lanes,
            instance_count,
        )
    return torch.get_num_threads()


# cpu_lanes = 0: one lane per thread, at most this many. Measured on 2 cores only (docs/sizing.md "CPU
# lanes"); past a few lanes each forward's activations (token_budget x the model's width) are held once per
# lane, and a lone request runs on fewer threads.
MAX_AUTO_LANES = 4


def cpu_lane_count(requested_threads: int, instance_count: int, requested_lanes: int) -> int:
    """How many forwards one CPU instance runs at once: `requested_lanes`, or (0) one per thread it has,
    at most MAX_AUTO_LANES."""
    return requested_lanes or min(MAX_AUTO_LANES, instance_cpu_threads(requested_threads, instance_count))


def per_shape_kernels_off() -> None:
    """torch's oneDNN paths off for this process (the model step's). In float32 on the CPU they serve only
    the vision tower's GELU (the Linears go to MKL, attention to torch's own kernels), and oneDNN builds and
    keeps a kernel for every new tensor shape, up to 1,024 of them; every image size is a new number of
    patches, so the model step's RSS grew with traffic. A GELU over 400 patch counts kept +16.5 MB at the tiny
    model's width and +18.5 MB at the 8B's (4,304) against +2.2 / +3.4 MB with torch's own GELU, in about
    the same time; without the step's fixed mmap threshold, +105 / +1,287 MB
    (perf/results/cpu-x86_64-2c/2026-12-07/per-shape-kernels*.md). In bfloat16 and float16 oneDNN is what
    makes CPU matmuls fast: kept."""
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a module property typed as its descriptor


class LinearPatchEmbed(torch.nn.Module):
    """Qwen3-VL's patch embedding as the Linear it is: its Conv3d's kernel equals its stride and sees one
    already-flattened patch per row. The weights are the conv's, reshaped, so the result is the same up to
    summation order. Every platform uses it: on the CPU the Conv3d goes through oneDNN, which keeps a kernel
    for every new number of patches (400 of them: +32 MB against the Linear's +6 MB) and took 3.6x the time
    (perf.experiments.per_shape_kernels); on Ascend Conv3d rejects bf16 on some chips, and 310P has none."""

    def __init__(self, conv: torch.nn.Conv3d):
        super().__init__()
        self.embed_dim = conv.out_channels
        self.proj = torch.nn.Linear(conv.weight[0].numel(), conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            self.proj.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            if conv.bias is not None:
                self.proj.bias.copy_(conv.bias)
        self.proj.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states.reshape(-1, self.proj.in_features).to(self.proj.weight.dtype))


class Platform:
    """The CPU; accelerators override what differs."""

    kind = "cpu"

    def __init__(self, device: torch.device):
        self.device = device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.device})"

    def resolve_dtype(self, requested: str) -> torch.dtype:
        """`auto`: bf16 on accelerators (fp16 on NPUs without bf16), fp32 on CPU."""
        return DTYPES[requested] if requested != "auto" else self.default_dtype()

    def default_dtype(self) -> torch.dtype:
        return torch.float32

    def compile_wanted(self, choice: str) -> bool:
        """`auto` compiles on CUDA only: on CPU the compile costs more load time than it saves (measured
        ~10 % gain at batch 16 for a compute-bound model, a loss at batch 1)."""
        return choice == "on"

    def activate(self, cpu_threads: int = 0, instance_count: int = 1, cpu_lanes: int = 0) -> int:
        """Make this the process's current device; on CPU, share the cores among the model's instances and
        the forwards each runs at once. Returns how many forwards run at once (accelerators: 1)."""
        lanes = cpu_lane_count(cpu_threads, instance_count, cpu_lanes)
        share_cpu_threads(cpu_threads, instance_count, lanes)
        return lanes

    def enter_thread(self) -> None:
        """Make this device current in a thread other than the one that called activate() (the model step's
        worker thread): CUDA and Ascend keep the current device per thread; torch's CPU thread count carries
        over by itself."""

    def prepare_model(self, model) -> None:
        """Changes to a loaded Qwen3-VL backbone: the vision tower's patch embedding as a Linear; on the CPU
        in float32, torch's oneDNN paths off (`per_shape_kernels_off`)."""
        visual = model.visual
        visual.patch_embed = LinearPatchEmbed(visual.patch_embed.proj)
        if self.device.type == "cpu" and model.dtype == torch.float32:
            per_shape_kernels_off()

    def synchronize(self) -> None:
        """Wait for queued device work (timing)."""

    def empty_cache(self) -> None:
        """Return cached device memory (after an out-of-memory, or a big temporary model)."""

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, torch.OutOfMemoryError)

    def name(self) -> str:
        """The device's marketing name, for perf reports."""
        return "cpu"


class CudaPlatform(Platform):
    kind = "cuda"

    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16

    def compile_wanted(self, choice: str) -> bool:
        return choice in ("auto", "on")

    def activate(self, cpu_threads: int = 0, instance_count: int = 1, cpu_lanes: int = 0) -> int:
        torch.cuda.set_device(self.device)
        return 1

    def enter_thread(self) -> None:
        torch.cuda.set_device(self.device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def name(self) -> str:
        return torch.cuda.get_device_name(self.device).replace("NVIDIA ", "")


class NpuPlatform(Platform):
    kind = "npu"

    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16 if _npu().is_bf16_supported() else torch.float16

    def compile_wanted(self, choice: str) -> bool:
        """torch.compile on Ascend needs torchair, which this project does not ship."""
        if choice == "on":
            raise ConfigError("compile=on is not supported on npu (torch.compile needs torchair there)")
        return False

    def activate(self, cpu_threads: int = 0, instance_count: int = 1, cpu_lanes: int = 0) -> int:
        _npu().set_device(self.device)
        return 1

    def enter_thread(self) -> None:
        _npu().set_device(self.device)

    def synchronize(self) -> None:
        _npu().synchronize(self.device)

    def empty_cache(self) -> None:
        _npu().empty_cache()

    def is_out_of_memory(self, error: BaseException) -> bool:
        # torch_npu raises a RuntimeError naming the NPU rather than torch.OutOfMemoryError.
        return super().is_out_of_memory(error) or (
            isinstance(error, RuntimeError) and "NPU out of memory" in str(error)
        )

    def name(self) -> str:
        return _npu().get_device_name(self.device.index or 0)


PLATFORMS: dict[str, type[Platform]] = {"cpu": Platform, "cuda": CudaPlatform, "npu": NpuPlatform}


def _available(kind: str) -> bool:
    return kind == "cpu" or (npu_available() if kind == "npu" else torch.cuda.is_available())


def _device_count(kind: str) -> int:
    return _npu().device_count() if kind == "npu" else torch.cuda.device_count()


def resolve_platform(requested: str, instance_index: int = 0, triton_gpu_id: int | None = None) -> Platform:
    """`auto|cpu|cuda[:N]|npu[:N]` -> the platform of one device. Without an explicit index, instance k of a
    model uses device k modulo the device count (Triton knows no NPUs, so this is how instances spread),
    except that a KIND_GPU instance uses the GPU Triton gave it."""
    kind, _, index = requested.partition(":")
    if kind == "auto":
        kind = next(candidate for candidate in ("npu", "cuda", "cpu") if _available(candidate))
    if kind not in PLATFORMS:
        raise ConfigError(
            f"device {requested!r}: choose one of auto, {', '.join(KINDS)} (with :N for an index)"
        )
    if kind == "cpu":
        return Platform(torch.device("cpu"))
    if not _available(kind):
        raise ConfigError(
            "device 'npu' was asked for, but torch_npu is not installed or sees no NPU"
            if kind == "npu"
            else "device 'cuda' was asked for, but torch sees no CUDA GPU"
        )
    count = _device_count(kind)
    if index:
        number = int(index)
    elif kind == "cuda" and triton_gpu_id is not None:
        number = triton_gpu_id
    else:
        number = instance_index % count
    if number >= count:
        raise ConfigError(f"device {kind}:{number} was asked for, but only {count} are visible")
    return PLATFORMS[kind](torch.device(kind, number))
