"""The serving path's own code, called in-process with ideal batches: the denominator of serving efficiency.

    python -m perf.lib.inprocess --model-path models/qwen3-vl-embedding-bench --workload text_200 \
        [--batch-sizes 1,4,16,64] [--device cpu] [--bare] [--compile] [--seconds 6] [--json out.json]

Modes, each over the workload's requests (rows), reported in rows per second:
  pipeline  EmbeddingPreprocessor.prepare (chat format, tokenise, media) + EmbeddingModel.embed (micro-batch
            plan, forward, pool, normalise, Matryoshka) on batches of B rows: everything the two Python
            models do, minus Triton
  embed     EmbeddingModel.embed alone on already-prepared rows (the model step's share)
  bare      (--modes bare) the HF forward + last-token pool + L2 norm on one collated batch, nothing else
            (text: the language model without a mask, as the model step runs it): what the device can do at
            best; with --compile also under torch.compile with static shapes (compiled for the best eager
            batch before timing), the reference the serving path's dynamic-shape graph is held to
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence, Sized
from functools import partial
from pathlib import Path

import numpy as np

from perf.lib.console import command_parser
from perf.lib.paths import REPO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def entry_inputs(entry: dict) -> dict[str, np.ndarray | None]:
    """One perf_analyzer JSON entry as the preprocess step's input tensors (batch of 1)."""
    from perf.lib.workloads import decode_bytes_tensor

    inputs: dict[str, np.ndarray | None] = {}
    for name, tensor in entry.items():
        if "b64" in tensor:
            inputs[name] = np.array([[decode_bytes_tensor(tensor)]], dtype=object)
        elif name == "DIMENSIONS":
            inputs[name] = np.array([tensor["content"]], dtype=np.int32)
        else:
            inputs[name] = np.array([[value.encode("utf-8") for value in tensor["content"]]], dtype=object)
    return inputs


def load_entries(workload: str, rows: int) -> list[dict]:
    from perf.lib.workloads import generate

    data = json.loads(generate(workload).read_text())["data"]
    return [data[index % len(data)] for index in range(rows)]


def count_rows(run: Callable[[list], Sized], rows: list) -> int:
    """How many rows `run(rows)` gave back: what `timed` counts."""
    return len(run(rows))


def timed(run: Callable[[], int], seconds: float, platform, min_repeats: int = 2) -> float:
    """Rows per second of `run` (which returns how many rows it did), repeated for at least `seconds`;
    `platform` (backend.runtime.platforms) waits for the device's queued work at both ends."""
    run()  # warm (lazy init, allocator, first-shape costs)
    platform.synchronize()
    rows, repeats, started = 0, 0, time.perf_counter()
    while repeats < min_repeats or time.perf_counter() - started < seconds:
        rows += run()
        repeats += 1
    platform.synchronize()
    return rows / (time.perf_counter() - started)


def bare_forward(model, rows, compiled_text=None):
    """Forward + last-token pool + L2 norm of one batch, nothing else: text batches run the language model
    alone without a mask (as the model step does, backend.runtime.compiled), through `compiled_text` if given;
    batches with images run the whole backbone as the model step does (BackboneRunner.last_hidden)."""
    import torch

    from backend.runtime.backbone import collate, text_only

    with torch.inference_mode():
        if not text_only(rows):
            pooled = model.last_hidden(rows)
        else:
            batch = collate(rows, model.pad_token_id, model.device, model.dtype)
            forward = compiled_text or model.text_forward.pooled
            pooled = forward(batch.input_ids, (batch.lengths - 1).to(model.device))
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)


def run(
    model_path: str,
    workloads: Sequence[str] = ("text_200",),
    batch_sizes: Sequence[int] = (1, 4, 16, 64),
    device: str = "cpu",
    dtype: str = "auto",
    seconds: float = 6.0,
    modes: Sequence[str] = ("pipeline", "embed"),
    compile_model: bool = False,
    deadline: float | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Rows per second for every workload x mode x batch size; `best` holds the first workload's best rate
    per mode. torch.compile (if asked) runs on the first workload only, at its best eager bare batch, and is
    skipped when `deadline` (time.monotonic()) leaves too little time."""
    import torch

    from backend.embedding.model import EmbeddingModel
    from backend.embedding.preprocess import EmbeddingPreprocessor
    from backend.settings import ModelSettings, PreprocessSettings

    started = time.perf_counter()
    preprocessor = EmbeddingPreprocessor(PreprocessSettings(model_path=str(model_path)))
    # The serving code compiles as it would when served (compile auto); bare-only runs compile their own.
    serving_compile = "off" if set(modes) <= {"bare"} else "auto"
    model = EmbeddingModel(
        # One forward at a time on every thread: the served step's lanes are the worker's, not the model's.
        ModelSettings(
            model_path=str(model_path), device=device, dtype=dtype, compile=serving_compile, cpu_lanes=1
        )
    )
    model.warmup()
    result: dict = {
        "model_path": str(model_path),
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "load_seconds": time.perf_counter() - started,
        "workloads": {},
    }

    def out_of_time(margin: float) -> bool:
        return deadline is not None and time.monotonic() + margin > deadline

    for number, workload in enumerate(workloads):
        entries = load_entries(workload, max(batch_sizes))
        inputs = [entry_inputs(entry) for entry in entries]
        prepared = [row for request in inputs for row in preprocessor.prepare_request(request)]
        section: dict = {"mean_tokens": float(np.mean([row.length for row in prepared])), "modes": {}}
        result["workloads"][workload] = section
        tokens = section["mean_tokens"]
        log(f"  in-process {workload} on {model.device} ({result['dtype']}), {tokens:.0f} tokens/row")

        def record(mode: str, batch: int, rate: float, section=section) -> None:
            section["modes"].setdefault(mode, {})[str(batch)] = rate
            log(f"    {mode:13s} batch {batch:4d}: {rate:9.2f} rows/s")

        # Media rows are big (a 448x448 image is 784 patches): past 64 of them a batch only tests memory.
        sizes = batch_sizes if workload.startswith("text") else [b for b in batch_sizes if b <= 64] or [1]
        try:
            for batch in sizes:
                if out_of_time(3 * seconds):
                    log("    out of time: remaining batch sizes skipped")
                    break
                if "pipeline" in modes:

                    def pipeline(batch=batch, inputs=inputs) -> int:
                        rows = [
                            row for request in inputs[:batch] for row in preprocessor.prepare_request(request)
                        ]
                        model.embed(rows)
                        return len(rows)

                    record("pipeline", batch, timed(pipeline, seconds, model.platform))
                if "embed" in modes:
                    rate = timed(partial(count_rows, model.embed, prepared[:batch]), seconds, model.platform)
                    record("embed", batch, rate)
                if "bare" in modes:
                    rate = timed(
                        partial(count_rows, partial(bare_forward, model), prepared[:batch]),
                        seconds,
                        model.platform,
                    )
                    record("bare", batch, rate)
        except Exception as error:  # one workload failing must not lose the others' numbers
            section["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            log(f"    {workload} failed: {section['error']}")
            continue

        if compile_model and number == 0:
            bare = section["modes"].get("bare") or {str(max(batch_sizes)): 0.0}
            batch = int(max(bare.items(), key=lambda item: item[1])[0])
            if out_of_time(150):
                section["compile_error"] = "skipped: not enough time left in the run for compiling"
                log(f"    torch.compile {section['compile_error']}")
                continue
            try:
                compiled = torch.compile(model.text_forward.pooled, dynamic=False)
                compile_started = time.perf_counter()
                bare_forward(model, prepared[:batch], compiled)  # compiles this shape
                model.platform.synchronize()
                section["compile_seconds"] = time.perf_counter() - compile_started
                log(f"    compiled batch {batch} in {section['compile_seconds']:.1f} s")
                forward = partial(bare_forward, model, compiled_text=compiled)
                rate = timed(partial(count_rows, forward, prepared[:batch]), seconds, model.platform)
                record("bare_compiled", batch, rate)
            except Exception as error:  # no C++ compiler, an unsupported op, ...
                section["compile_error"] = f"{type(error).__name__}: {str(error)[:300]}"
                log(f"    torch.compile failed: {section['compile_error']}")

    first = result["workloads"][workloads[0]]
    result["workload"] = workloads[0]
    result["mean_tokens"] = first["mean_tokens"]
    result["modes"] = first["modes"]
    result["best"] = {mode: max(rates.values()) for mode, rates in first["modes"].items() if rates}
    return result


def in_subprocess(
    model_path: Path, out: Path, options: list[str], timeout: float, drop_env: Sequence[str] = ()
) -> tuple[int | None, dict | None]:
    """`python -m perf.lib.inprocess` in a fresh interpreter (no server running, torch's threads its own):
    (its exit code, None when it ran past `timeout`; the JSON it wrote, if it did)."""
    command = [
        sys.executable,
        "-m",
        "perf.lib.inprocess",
        "--model-path",
        str(model_path),
        "--json",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in drop_env:
        env.pop(name, None)
    try:
        code: int | None = subprocess.run(command + options, cwd=REPO, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        code = None
    return code, json.loads(out.read_text()) if out.exists() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser("perf.lib.inprocess", __doc__)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--workload", default="text_200", help="comma list; the first is the headline")
    parser.add_argument("--batch-sizes", default="1,4,16,64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--modes", default="pipeline,embed", help="pipeline, embed, bare")
    parser.add_argument(
        "--compile", action="store_true", help="also time the bare forward under torch.compile"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--deadline-s", type=float, default=0.0, help="stop starting new work after this long"
    )
    args = parser.parse_args(argv)
    result = run(
        args.model_path,
        args.workload.split(","),
        [int(b) for b in args.batch_sizes.split(",")],
        args.device,
        args.dtype,
        args.seconds,
        [mode for mode in args.modes.split(",") if mode],
        args.compile,
        time.monotonic() + args.deadline_s if args.deadline_s else None,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
