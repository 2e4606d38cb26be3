"""The configuration tables of docs/configuration.md, rendered from the settings classes.

Defaults come from the classes themselves (backend/settings.py, gateway/settings.py); the one thing this
module adds is a sentence per setting. `python -m tools.settings_tables --write` rewrites the generated parts
of the page; `--check` (and tests/unit/test_settings_tables.py) fails when the page and the classes disagree,
or when a setting has no sentence here or a sentence names no setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from backend.settings import (
    EMBEDDING_ENV,
    ModelSettings,
    PreprocessSettings,
    RerankModelSettings,
    RerankPreprocessSettings,
    parameter_table,
)
from gateway.settings import ENVIRONMENT, GatewaySettings

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

PREPROCESS_MEANINGS = {
    "model_path": "checkpoint directory (tokenizer and `config.json` are read)",
    "max_length": "token limit per item; text beyond it is truncated",
    "default_instruction": "system prompt when a row has no `INSTRUCTION`",
    "max_text_bytes": "UTF-8 bytes per text input (`TEXT`, `INSTRUCTION`, the reranker's texts); over it is "
    "`INVALID_ARG`. Only a prefix that holds `max_length` tokens is tokenised",
    "max_model_queue": "requests this preprocess instance has handed on that may wait for the model step at "
    "once; more are refused at once with `UNAVAILABLE` / 503, before any preprocessing: the model step's "
    "queue bound (at most 512 with the 2 instances; 256 per instance so that the gateway's 256 in flight are "
    "never refused, however they spread; see [Overload](overload.md)). A client calling the preprocess step "
    "alone counts only while the model step is busy",
    "service_rate_smoothing": "weight of the newest sample (of 1,024 tokens or more; a smaller one counts "
    "less) in the rate at which the model step takes this instance's requests (tokens per second, decayed "
    "sums of tokens and of seconds), in (0, 1]: with the model step's `expected_wait_share` it refuses at "
    "once what would wait too long",
    "image_min_pixels": "smart-resize lower pixel bound (4·32²)",
    "image_max_pixels": "smart-resize upper pixel bound (1800·32²)",
    "video_fps": "frames sampled per second of video",
    "video_max_frames": "most frames sampled from one video",
    "video_min_pixels": "per-frame lower pixel bound (128·32²)",
    "video_max_pixels": "per-frame upper pixel bound (768·32²)",
    "max_image_bytes": "limit on an encoded image",
    "max_image_pixels": "limit on an image's decoded size",
    "max_images_per_item": "images per row",
    "max_video_bytes": "limit on an encoded video",
    "max_video_seconds": "limit on a video's length; its seconds come from the container, and from frames ÷ "
    "frame rate where it has no duration (raw H.264)",
    "max_video_frame_pixels": "frame size (4K), checked from the header before decoding and on every "
    "decoded frame",
    "max_video_decoded_frames": "frame count, checked from the packets before decoding and on every decoded "
    "frame",
    "max_videos_per_item": "videos per row",
    "video_containers": "FFmpeg demuxers a `VIDEO` may use; any other (an `ffconcat` script, HLS/DASH "
    "playlist, image pattern) is `INVALID_ARG` before it can open a file or URL. `concat`, `hls`, `dash`, "
    "`image2`, `imf` cannot be listed",
}

MODEL_MEANINGS = {
    "model_path": "Hugging Face checkpoint directory",
    "device": "`auto`, `cpu`, `cuda[:N]`, `npu[:N]`; auto = NPU if `torch_npu` imports and sees one, else "
    "CUDA, else CPU",
    "dtype": "`auto` (bf16 on accelerators — fp16 on NPUs without bf16 — fp32 on CPU), `bfloat16`, "
    "`float16`, `float32`",
    "attn_implementation": "`sdpa`, `eager`, `flash_attention_2`",
    "token_budget": "max tokens (rows × longest row) per forward micro-batch",
    "max_rows_per_batch": "max rows per micro-batch",
    "vision_patch_budget": "max vision patches per micro-batch",
    "batch_overhead_tokens": "cost of one more forward in tokens; the planner trades padding against it (128 "
    "keeps padded ÷ real tokens ≤ 1.15 on `text_mixed`, see perf/)",
    "compile": "`torch.compile` the text-only forward at load: `auto` (on for CUDA only), `on`, `off`",
    "compile_mode": "torch.compile mode: `default`, `reduce-overhead`, `max-autotune`, "
    "`max-autotune-no-cudagraphs` (CUDA-graph modes record one graph per distinct batch shape: pair them "
    "with a coarse `compile_length_multiple`)",
    "compile_length_multiple": "compiled text batches are padded to a multiple of this many tokens (at "
    "least 16)",
    "cpu_threads": "torch threads per instance on CPU; `0` = the cores divided among the model step's "
    "instances (torch's default, all cores in every instance, oversubscribes the CPU as soon as `count` > 1)",
    "cpu_lanes": "micro-batches one instance runs at once on CPU, each on `cpu_threads` ÷ `cpu_lanes` torch "
    "threads; `0` = one per thread, at most 4 (on 2 cores, two single-threaded forwards side by side served "
    "1.3-1.5x the text requests/s of one forward on both; see [Sizing](sizing.md#cpu-lanes)); accelerators "
    "run one micro-batch at a time",
    "warmup": "run one forward at load time (and compile, when compiling)",
    "queue_timeout_seconds": "a request that waited longer than this since its preprocess step answered is "
    "refused with `UNAVAILABLE` / 503 instead of run late: the step's queue bound (see "
    "[Overload](overload.md)); requests that come without `QUEUED_AT` (a client calling the step directly) "
    "are never refused",
    "bulk_share": "of the model's work (padded tokens) while interactive and bulk rows both wait, the share "
    "bulk rows (an indexing job's) are owed: interactive rows go first, bulk is never starved (see "
    "[Priority](indexing.md#priority)); between 0 and 1",
    "bulk_backlog_tokens": "bulk rows the model step takes in from Triton's queue ahead of time, not started "
    "(interactive rows: one `token_budget`): Triton's queue in front of the step is first come, first "
    "served, so a query waits there behind every bulk request not yet taken, and inside the step it "
    "overtakes them; bounds the memory they hold (images: ~6 KB per token)",
    "expected_wait_share": "the preprocess steps refuse a request at once (`UNAVAILABLE` / 503, before "
    "tokenising it) when the tokens queued ahead of it divided by the rate this step takes them at are "
    "over this share of `queue_timeout_seconds` (text and media tokens each at its own measured rate); "
    "nothing is refused before the rates of the work ahead are measured; `0` = off (refused only once the "
    "timeout has passed; see [Overload](overload.md#refusal-by-expected-wait))",
    "max_length": "most text tokens (vision placeholders not counted: they are bounded by the patches sent) "
    "in a row the step runs; the preprocess step never sends more, a client calling the step directly gets "
    "`INVALID_ARG` (the reranker's is its preprocess `max_length` + the 5 kept tail tokens; keep the two in "
    "step when changing either)",
}

GATEWAY_MEANINGS = {
    "host": "where the gateway listens (`0.0.0.0` in a container)",
    "port": "the gateway's port",
    "api_key": "when set, every route but `/health`, `/ping`, `/version`, `/metrics` wants "
    "`Authorization: Bearer <key>`",
    "served_model_names": "names `model` may take for embeddings, comma-separated, first reported when a "
    "request names none. Unset: what vLLM would serve for the weights Triton runs (the Hugging Face id, or "
    "the directory's name, its path and `Qwen/<name>`); the ensemble name is always accepted",
    "served_reranker_names": "the same for rerank and score",
    "triton_grpc_url": "Triton's gRPC endpoint",
    "embedding_model": "the Triton embedding ensemble called",
    "reranker_model": "the Triton reranker ensemble called",
    "reranker_path": "the reranker's checkpoint, for its served names when Triton reports no `model_path` "
    "(unset: `RERANKER_MODEL_PATH`)",
    "tokenizer_path": "checkpoint directory whose `tokenizer.json` serves `/tokenize`, `/detokenize` and "
    "compatibility-mode truncation",
    "input_format": "`vllm` = the compatibility mode by default",
    "max_body_bytes": "larger bodies get 413",
    "max_items": "inputs, conversations, documents or pairs per request (and entries of any other list)",
    "max_body_values": "JSON values (list entries and object fields) per body, counted as it arrives; more "
    "is 413 before anything is parsed. It bounds the parse time (the event loop's) and memory",
    "max_token_ids": "token ids per item; more is 400 naming the item",
    "max_text_chars": "characters per text (an input, a content part, a document, an instruction); more is "
    "400 naming the field, before validation",
    "max_in_flight": "requests at Triton at once, at most",
    "in_flight_seconds": "and at most what Triton finishes in this time at the measured rate (`0` = the "
    "fixed bound alone)",
    "max_waiting": "requests waiting for a slot (a memory guard)",
    "coalesce_calls": "Triton calls of text rows per ensemble at once; what arrives meanwhile is merged into "
    "one call when one finishes (`0` = off: every request its own call)",
    "coalesce_max_tokens": "tokens (estimated: UTF-8 bytes / 4) merged into one call at most; a request "
    "over it alone still goes alone (`0` = rows alone bound a merged call)",
    "queue_timeout": "seconds a request may (be expected to) wait before a 503",
    "burst_seconds": "how long requests may arrive faster than they complete (every slot taken) before it "
    "is overload, not a burst: then a newcomer gets 503 at once while a round of calls waits, and those "
    "already waiting are served in order (`0` = first come, first served, only the queue timeout sheds)",
    "latency_target_ratio": "unless `0`, the in-flight bound also keeps Triton's median call latency near "
    "this many times that of a call alone (re-measured every 10 s; "
    "`gateway_triton_unloaded_latency_seconds`), at a cost in throughput; under overload nobody waits then "
    "(a request is served only if it finds a slot free). The latency profile: `1.25` with "
    "`GATEWAY_BURST_SECONDS=1` (see [Overload](overload.md#the-latency-profile))",
    "request_timeout": "seconds for one Triton call (then 504)",
    "retry_after": "`Retry-After` seconds when there is no better estimate",
    "allow_url_fetch": "fetch `http(s)` media URLs (no redirects; size and time limits). Off: only `data:` "
    "URIs — a gateway that fetches any URL it is given is an SSRF hole",
    "allowed_local_media_path": "`file:` URLs are read only under this directory",
    "media_fetch_timeout": "seconds to fetch one media URL",
    "media_max_bytes": "limit on one fetched or decoded media file",
    "offload_bytes": "bodies and media larger than this are decoded in a worker thread",
    "header_timeout": "seconds for a connection's request headers to arrive (from its opening or its last "
    "response); later, it is closed",
    "body_timeout": "seconds for a request body to arrive; later is 408",
    "keep_alive_timeout": "seconds an idle keep-alive connection is kept",
    "log_level": "uvicorn's log level",
}

# Defaults that depend on the environment the gateway starts in (settings_from_env), not on the class.
GATEWAY_DEFAULT_NOTES = {
    "triton_grpc_url": "`127.0.0.1:$TRITON_GRPC_PORT` (8001)",
    "tokenizer_path": "`MODEL_PATH`, else the preprocess step's `model_path`",
}

BEGIN = "<!-- generated by tools/settings_tables.py: {name} -->"
END = "<!-- end of generated table -->"


def _cell(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`"
    return f"`{value}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _parameters(cls: type, meanings: dict[str, str]) -> str:
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for name, default in parameter_table(cls):
        default_text = default.lower() if default in ("True", "False") else default
        variable = EMBEDDING_ENV.get(name)
        override = f" (environment: `{variable}`)" if variable else ""
        rows.append(f"| `{name}` | `{default_text}` | {_escape(meanings[name])}{override} |")
    return "\n".join(rows)


def _reranker_differences() -> str:
    rows = ["| model | parameter | embedding default | reranker default |", "|---|---|---|---|"]
    pairs = (
        ("qwen3_vl_reranker_preprocess", PreprocessSettings, RerankPreprocessSettings),
        ("qwen3_vl_reranker_model", ModelSettings, RerankModelSettings),
    )
    for model, base, reranker in pairs:
        embedding_defaults = dict(parameter_table(base))
        for name, default in parameter_table(reranker):
            if embedding_defaults[name] != default:
                rows.append(
                    f"| `{model}` | `{name}` | `{_escape(embedding_defaults[name])}` | `{_escape(default)}` |"
                )
    return "\n".join(rows)


def _gateway() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    defaults = GatewaySettings()
    for field in dataclasses.fields(GatewaySettings):
        name = field.name
        default = GATEWAY_DEFAULT_NOTES.get(name) or _cell(getattr(defaults, name))
        rows.append(f"| `{ENVIRONMENT[name]}` | {default} | {_escape(GATEWAY_MEANINGS[name])} |")
    return "\n".join(rows)


def tables() -> dict[str, str]:
    """Every generated table by the name its markers carry in the page."""
    return {
        "embedding preprocess": _parameters(PreprocessSettings, PREPROCESS_MEANINGS),
        "embedding model": _parameters(ModelSettings, MODEL_MEANINGS),
        "reranker differences": _reranker_differences(),
        "gateway": _gateway(),
    }


def missing_meanings() -> list[str]:
    """Settings without a sentence here, and sentences for settings that no longer exist."""
    problems = []
    for cls, meanings in ((PreprocessSettings, PREPROCESS_MEANINGS), (ModelSettings, MODEL_MEANINGS)):
        names = {name for name, _ in parameter_table(cls)}
        problems += [f"{cls.__name__}.{name} has no meaning" for name in sorted(names - set(meanings))]
        problems += [f"{name} is not a field of {cls.__name__}" for name in sorted(set(meanings) - names)]
    fields = {field.name for field in dataclasses.fields(GatewaySettings)}
    problems += [f"GatewaySettings.{name} has no meaning" for name in sorted(fields - set(GATEWAY_MEANINGS))]
    problems += [f"{name} is not a GatewaySettings field" for name in sorted(set(GATEWAY_MEANINGS) - fields)]
    return problems


def render(page: str) -> str:
    """The page with every generated block replaced by its table; a missing marker is an error."""
    for name, table in tables().items():
        begin = BEGIN.format(name=name)
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(END), re.S)
        match = pattern.search(page)
        if match is None:
            raise ValueError(f"{PAGE.name} has no generated block {name!r} ({begin} ... {END})")
        page = page[: match.start()] + f"{begin}\n{table}\n{END}" + page[match.end() :]
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the tables in {PAGE}")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is out of date")
    args = parser.parse_args(argv)
    problems = missing_meanings()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if not args.write and not args.check:
        print("\n\n".join(f"{name}:\n{table}" for name, table in tables().items()))
        return 0
    current = PAGE.read_text()
    wanted = render(current)
    if wanted == current:
        return 0
    if args.check:
        print(f"{PAGE} is out of date: run python -m tools.settings_tables --write", file=sys.stderr)
        return 1
    PAGE.write_text(wanted)
    print(f"rewrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
