"""Typed settings read once from a model's `config.pbtxt` parameters, with environment overrides.

Every knob a deployment can turn lives here, with its default, so the docs and the code cannot drift apart:
docs/configuration.md's tables are rendered from these classes (`python -m tools.settings_tables --write`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from backend.errors import ConfigError
from backend.protocol import DEFAULT_EMBEDDING_INSTRUCTION, DEFAULT_RERANK_INSTRUCTION

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EMBEDDING_MODEL = REPO_ROOT / "models" / "qwen3-vl-embedding-tiny"
DEFAULT_RERANKER_MODEL = REPO_ROOT / "models" / "qwen3-vl-reranker-tiny"

MIB = 1024 * 1024
# Token limits per item, as the official code has them; the model steps accept rows up to these lengths
# (the reranker's truncation keeps its last RERANK_KEPT_TAIL tokens beyond max_length).
EMBEDDING_MAX_LENGTH = 8192
RERANK_MAX_LENGTH = 10240
RERANK_KEPT_TAIL = 5
COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclasses.dataclass(frozen=True)
class VisionSettings:
    """How images and videos are decoded, sized and sampled (defaults = the official embedder)."""

    image_min_pixels: int = 4 * 32 * 32
    image_max_pixels: int = 1800 * 32 * 32
    video_fps: float = 1.0
    video_max_frames: int = 64
    video_min_pixels: int = 128 * 32 * 32
    video_max_pixels: int = 768 * 32 * 32
    # Limits that protect the server; checked before a full decode where the container says enough.
    max_image_bytes: int = 32 * MIB
    max_image_pixels: int = 64_000_000
    max_images_per_item: int = 16
    max_video_bytes: int = 128 * MIB
    max_video_seconds: float = 900.0
    max_video_frame_pixels: int = 3840 * 2160
    max_video_decoded_frames: int = 30_000
    max_videos_per_item: int = 4
    # FFmpeg demuxers a VIDEO may use (names as `ffmpeg -demuxers` prints them). Every other one is refused
    # before its header is read: concat scripts, HLS/DASH playlists and image2 patterns would open further
    # files or URLs on the server.
    video_containers: str = "mov,matroska,webm,gif,avi,h264,hevc,mpegts,mpeg,flv,ogg,asf,m4v"


@dataclasses.dataclass(frozen=True)
class PreprocessSettings:
    model_path: str = str(DEFAULT_EMBEDDING_MODEL)
    max_length: int = EMBEDDING_MAX_LENGTH
    default_instruction: str = DEFAULT_EMBEDDING_INSTRUCTION
    # UTF-8 bytes per text input (TEXT, INSTRUCTION, QUERY_TEXT, DOCUMENT_TEXT); longer is INVALID_ARG. Only
    # a prefix holding max_length tokens is tokenised, but a single unbroken run of letters is tokenised
    # whole (~4 s per MiB on 2 cores), so this bounds the work per text.
    max_text_bytes: int = MIB
    # Requests this instance has handed on that may wait for the model step at once; past it new ones are
    # refused with UNAVAILABLE before any preprocessing (backend.backpressure: the model step's queue bound).
    max_model_queue: int = 256
    # The weight of the newest sample (of 1,024 tokens or more; a smaller one counts less) in the rate at
    # which the model step takes this instance's requests (tokens per second, decayed sums of tokens and of
    # seconds, backend.admission.ServiceRate): with the model step's
    # expected_wait_share it refuses at once what would wait too long (backend.admission).
    service_rate_smoothing: float = 0.2
    vision: VisionSettings = VisionSettings()


@dataclasses.dataclass(frozen=True)
class RerankPreprocessSettings(PreprocessSettings):
    """The same knobs; the official reranker's defaults."""

    model_path: str = str(DEFAULT_RERANKER_MODEL)
    max_length: int = RERANK_MAX_LENGTH
    default_instruction: str = DEFAULT_RERANK_INSTRUCTION


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    model_path: str = str(DEFAULT_EMBEDDING_MODEL)
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    # A micro-batch holds at most this many tokens counting padding (rows x longest row) ...
    token_budget: int = 16384
    # ... at most this many rows ...
    max_rows_per_batch: int = 64
    # ... and at most this many vision patches (before the 2x2 merge) across its images and videos.
    vision_patch_budget: int = 65536
    # What one more forward call costs, in padded tokens; the batch planner trades padding against it.
    batch_overhead_tokens: int = 128
    # torch.compile the text-only forward (one dynamic-shape graph, compiled during warm-up at load):
    # auto = on CUDA only; on | off. `compile_mode` is torch.compile's mode; text batches are padded to a
    # multiple of `compile_length_multiple` tokens when compiled.
    compile: str = "auto"
    compile_mode: str = "default"
    compile_length_multiple: int = 16
    # torch threads per instance on CPU; 0 = the cores divided among the model's instances.
    cpu_threads: int = 0
    # Micro-batches one instance runs at once on CPU, each on cpu_threads / cpu_lanes torch threads; 0 = one
    # per thread, at most 4. On 2 cores two single-threaded forwards side by side ran 1.2-1.5x the rows/s
    # of one forward on both threads (docs/sizing.md "CPU lanes"); accelerators run one at a time.
    cpu_lanes: int = 0
    warmup: bool = True
    # A request that waited longer than this since the preprocess step answered it (QUEUED_AT) is refused
    # with UNAVAILABLE instead of run late: the step's queue bound (README "Overload").
    queue_timeout_seconds: float = 10.0
    # Of the model's work (padded tokens) while interactive and bulk rows both wait, the share bulk rows
    # (an indexing job's, marked by its client) are owed: interactive rows go first, bulk is never starved
    # (backend.runtime.priority; docs/indexing.md "Priority").
    bulk_share: float = 0.1
    # Bulk rows the step takes in from Triton's queue ahead of time, not started (interactive ones: one
    # token_budget). Triton's queue in front of the step is first come, first served: a query waits there
    # behind every bulk request not yet taken, and in here it overtakes them. Bounds the memory they hold.
    bulk_backlog_tokens: int = 65536
    # The preprocess steps refuse at once (UNAVAILABLE, before tokenising) a request whose expected wait for
    # this step, the tokens queued ahead of it divided by the rate this step takes them at, is over this
    # share of queue_timeout_seconds, text and media each at its own rate; 0 = off, refused only once the
    # timeout has passed (backend.admission, docs/overload.md).
    expected_wait_share: float = 1.0
    # Longest row this step runs: the preprocess step never sends more, a direct caller may (tested to agree
    # with the preprocess step's max_length in tests/unit/test_protocol.py).
    max_length: int = EMBEDDING_MAX_LENGTH


@dataclasses.dataclass(frozen=True)
class RerankModelSettings(ModelSettings):
    model_path: str = str(DEFAULT_RERANKER_MODEL)
    max_length: int = RERANK_MAX_LENGTH + RERANK_KEPT_TAIL


# Parameter name -> environment variable that overrides it (the documented deployment switches).
EMBEDDING_ENV = {
    "model_path": "MODEL_PATH",
    "device": "DEVICE",
    "dtype": "DTYPE",
    "attn_implementation": "ATTN_IMPLEMENTATION",
    "compile": "COMPILE",
}
RERANKER_ENV = {**EMBEDDING_ENV, "model_path": "RERANKER_MODEL_PATH"}
# Every environment variable that changes what a started server serves.
SERVER_ENV_VARIABLES = tuple(dict.fromkeys([*EMBEDDING_ENV.values(), *RERANKER_ENV.values()]))

# Demuxers that read further files or URLs named inside the input: never allowed for client bytes.
FILE_OPENING_DEMUXERS = frozenset({"concat", "hls", "dash", "image2", "imf"})
ZERO_ALLOWED = {"batch_overhead_tokens", "cpu_threads", "cpu_lanes", "expected_wait_share"}

_T = TypeVar("_T")


def read_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """`parameters { key: ... value { string_value: ... } }` of a Triton model config, as a plain dict."""
    raw = model_config.get("parameters") or {}
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


def _convert(name: str, text: str, kind: type) -> Any:
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return kind(text.strip()) if kind is not str else text
    except ValueError:
        raise ConfigError(f"parameter {name!r}: cannot read {text!r} as {kind.__name__}") from None


def _build(cls: type[_T], values: Mapping[str, str], used: set[str]) -> _T:
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[field.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):  # a nested settings class
            kwargs[field.name] = _build(kind, values, used)
        elif field.name in values:
            used.add(field.name)
            kwargs[field.name] = _convert(field.name, values[field.name], kind)
    return cls(**kwargs)


def load_settings(
    cls: type[_T],
    parameters: Mapping[str, str],
    env_overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> _T:
    """Typed settings from config parameters; a non-empty environment variable named in
    `env_overrides` wins over the parameter. Empty parameter values mean "use the default".
    Unknown lower-case parameters are an error (a typo should not silently do nothing); upper-case ones
    belong to Triton (EXECUTION_ENV_PATH, ...) and are ignored."""
    environ = os.environ if environ is None else environ
    values = {key: value for key, value in parameters.items() if value != ""}
    for key, variable in (env_overrides or {}).items():
        if environ.get(variable):
            values[key] = environ[variable]
    used: set[str] = set()
    settings = _build(cls, values, used)
    unknown = sorted(key for key in values if key not in used and not key.isupper())
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} for {cls.__name__}")
    _validate(settings)
    return settings


def _validate(settings: Any) -> None:
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            _validate(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0 or (value == 0 and field.name not in ZERO_ALLOWED):
                raise ConfigError(f"parameter {field.name!r} must be positive, got {value}")
    if isinstance(settings, PreprocessSettings) and settings.service_rate_smoothing > 1:
        raise ConfigError(f"service_rate_smoothing must be in (0, 1], got {settings.service_rate_smoothing}")
    if isinstance(settings, ModelSettings):
        if settings.device.split(":")[0] not in ("auto", "cpu", "cuda", "npu"):
            raise ConfigError(f"device must be auto, cpu, cuda[:N] or npu[:N], got {settings.device!r}")
        if settings.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"dtype must be auto, bfloat16, float16 or float32, got {settings.dtype!r}")
        if settings.compile not in COMPILE_CHOICES:
            raise ConfigError(f"compile must be auto, on or off, got {settings.compile!r}")
        if settings.compile_mode not in COMPILE_MODES:
            raise ConfigError(
                f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {settings.compile_mode!r}"
            )
        if not settings.bulk_share < 1:
            raise ConfigError(f"bulk_share must be below 1, got {settings.bulk_share}")
        if settings.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            raise ConfigError(
                "attn_implementation must be sdpa, eager or flash_attention_2, "
                f"got {settings.attn_implementation!r}"
            )
    if isinstance(settings, VisionSettings):
        if settings.image_min_pixels > settings.image_max_pixels:
            raise ConfigError("image_min_pixels must not exceed image_max_pixels")
        if settings.video_min_pixels > settings.video_max_pixels:
            raise ConfigError("video_min_pixels must not exceed video_max_pixels")
        names = settings.video_containers.split(",")
        opening = sorted(set(names) & FILE_OPENING_DEMUXERS)
        if opening or not all(name.isidentifier() for name in names):
            raise ConfigError(
                "video_containers must be comma-separated FFmpeg demuxer names, none of "
                f"{', '.join(sorted(FILE_OPENING_DEMUXERS))}; got {settings.video_containers!r}"
            )


def parameter_table(cls: type) -> list[tuple[str, str]]:
    """(name, default) for every parameter of a settings class, nested ones flattened."""
    rows: list[tuple[str, str]] = []
    instance = cls()
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            rows.extend(parameter_table(hints[field.name]))
        else:
            default = getattr(instance, field.name)
            if field.name == "model_path":
                default = str(Path(default).relative_to(REPO_ROOT))
            rows.append((field.name, str(default)))
    return rows


if __name__ == "__main__":
    for settings_cls in (PreprocessSettings, ModelSettings, RerankPreprocessSettings, RerankModelSettings):
        print(f"## {settings_cls.__name__}")
        for name, default in parameter_table(settings_cls):
            print(f"| `{name}` | `{default}` |")
