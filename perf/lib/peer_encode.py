"""sentence-transformers' side of `perf.peer`, run by the peer venv's Python (`.venv-peer/`), never the
project's: it needs transformers 5 (sentence-transformers 6 requires it; the project pins 4.57.3).

    .venv-peer/bin/python -m perf.lib.peer_encode --model CKPT --items items.json --out DIR [--batch-size 32]
    .venv-peer/bin/python -m perf.lib.peer_encode --model CKPT --probe

Imports only the standard library, numpy, Pillow and sentence_transformers (nothing of the project), loads
the checkpoint once, encodes the first batch as a warm-up, then all items, timed (wall and this process's
CPU), and writes `peer.json` (versions, seconds, CPU seconds, items) and `vectors.npy` (float32,
L2-normalised) into DIR. Items: a JSON list of {"text": str | null, "image": path | null, "instruction": str}
(see `inputs`). `--probe` loads and encodes one text, prints the versions as JSON and exits 0, or prints
why not and exits 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load(model: str) -> Any:
    """The checkpoint as sentence-transformers loads it. Without a sentence-transformers configuration of
    its own (`modules.json`; the tiny and bench checkpoints have none) it would mean-pool: the model's
    pooling is the last token, so that is set, as the released model's configuration does."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model, device="cpu", local_files_only=True)
    if not (Path(model) / "modules.json").exists():
        from sentence_transformers.sentence_transformer.modules import Pooling

        encoder[1] = Pooling(encoder.get_embedding_dimension(), pooling_mode="lasttoken")
        # The model reads the hidden state after the assistant prompt, as the server's chat prompt ends.
        encoder[0].processing_kwargs = {"chat_template": {"add_generation_prompt": True}}
    return encoder


def versions() -> dict[str, str]:
    import numpy
    import sentence_transformers
    import torch
    import transformers

    return {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def inputs(items: list[dict[str, Any]]) -> list[Any]:
    """Rows with an instruction as the server's chat messages: system = the instruction, user = the image
    (if any) then the text (if any), the official order; rows without one as strings or
    sentence-transformers' multimodal dicts (image, caption). The checkpoint's processor resizes an image
    by its own limits, not the server's (4 to 1800 x 32² pixels): the same for image_448's 448x448, whose
    sides are already multiples of 32 within both."""
    from PIL import Image

    out: list[Any] = []
    for item in items:
        image = Image.open(item["image"]).convert("RGB") if item.get("image") else None
        if item.get("instruction"):
            content: list[dict[str, Any]] = [] if image is None else [{"type": "image", "image": image}]
            if item.get("text") is not None:
                content.append({"type": "text", "text": item["text"]})
            out.append(
                [
                    {"role": "system", "content": [{"type": "text", "text": item["instruction"]}]},
                    {"role": "user", "content": content},
                ]
            )
        elif image is not None:
            entry: dict[str, Any] = {"image": image}
            if item.get("text"):
                entry["text"] = item["text"]
            out.append(entry)
        else:
            out.append(item["text"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.lib.peer_encode", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--items", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args(argv)
    try:
        model = load(args.model)
        if args.probe:
            model.encode(["probe"], normalize_embeddings=True)
            print(json.dumps(versions()))
            return 0
    except Exception as error:  # the reason is the report: which package or class is missing
        text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"{type(error).__name__}: {text[:400]}", file=sys.stderr)
        return 1
    import numpy as np

    items = inputs(json.loads(args.items.read_text()))
    model.encode(items[: args.batch_size], batch_size=args.batch_size, normalize_embeddings=True)  # warm-up
    cpu, wall = cpu_seconds(), time.perf_counter()
    vectors = model.encode(
        items, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True
    )
    seconds, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "vectors.npy", np.asarray(vectors, dtype=np.float32))
    report = {"items": len(items), "seconds": seconds, "cpu_seconds": cpu, "versions": versions()}
    (args.out / "peer.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
