"""How much top-k retrieval with compact vectors agrees with float32, and what each type costs in bytes:
``python -m perf.experiments.compact_vectors [--corpus 2000] [--queries 200] [--seed 0] [--out DIR]``.

Two fixed, seeded test sets:
- ``tiny model``: seeded sentences from a fixed vocabulary, embedded by the model step's own code
  (EmbeddingPreprocessor + EmbeddingModel, in-process) with the tiny checkpoint (random weights: this measures
  agreement with float32, not retrieval quality), at full width and at each --dims Matryoshka size;
- ``gaussian``: seeded unit vectors at the real models' widths (2048 = 2B, 4096 = 8B), queries being noisy
  copies of corpus vectors, so that there is a neighbourhood to find; no model involved.

Every type is made by ``qwen3vl_client.bulk.quantize.compact`` (cut, normalise, quantise: the bytes the
embedding ensemble's EMBEDDING_* outputs and the gateway return), scored symmetrically (queries and corpus in
the same type, dequantised; binary types rank by Hamming distance) and compared with float32's top-k:
``overlap@k`` = shared results / k, averaged over queries; ``top-1 kept`` = share of queries whose float32
best result is in the type's top k. int8/uint8 use the documented fixed range, and also the range
calibrated on the corpus (``calibrate_range``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from perf.lib.console import add_out_argument, command_parser
from perf.lib.paths import REPO
from perf.lib.record import Experiment

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

quantize = importlib.import_module("qwen3vl_client.bulk.quantize")
RESCORE = 4
WORDS = (
    "river mountain city night light train music winter garden ocean market paper engine window bridge "
    "forest coffee screen signal camera street storm letter island mirror planet circuit harbour desert "
    "violin kitchen museum rocket pencil theatre glacier library lantern orchard canyon festival "
    "satellite bicycle chapter compass meadow battery cathedral volcano"
).split()


def sentences(count: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(count)]


def tiny_model_vectors(model_path: Path, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """The model step's float32 vectors of texts (documents: the default instruction), full width."""
    from backend.embedding.model import EmbeddingModel
    from backend.embedding.preprocess import EmbeddingPreprocessor
    from backend.protocol import EmbeddingItem
    from backend.settings import ModelSettings, PreprocessSettings

    preprocessor = EmbeddingPreprocessor(PreprocessSettings(model_path=str(model_path)))
    model = EmbeddingModel(ModelSettings(model_path=str(model_path), device="cpu", dtype="float32"))
    rows = [preprocessor.prepare(EmbeddingItem(text=text)) for text in texts]
    out: list[np.ndarray] = []
    for start in range(0, len(rows), batch):
        out.extend(model.embed(rows[start : start + batch]))
    return np.stack(out).astype(np.float32)


def gaussian_set(width: int, corpus: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = quantize.cut_normalise(rng.normal(size=(corpus, width)))
    picked = docs[rng.integers(0, corpus, size=queries)]
    noisy = picked + rng.normal(scale=1.0 / np.sqrt(width), size=picked.shape)  # cosine ~0.7 to its source
    return docs, quantize.cut_normalise(noisy)


def top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ docs.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def agreement(
    queries: np.ndarray, docs: np.ndarray, dimensions: int | None, k: int
) -> list[dict[str, object]]:
    """One row per type: overlap@k and top-1 kept against float32, bytes per vector."""
    unit_q, unit_d = quantize.cut_normalise(queries, dimensions), quantize.cut_normalise(docs, dimensions)
    width = unit_d.shape[1]
    reference = top_k(unit_q, unit_d, k)
    cases: list[tuple[str, str, float | None]] = [(t, t, None) for t in quantize.VECTOR_TYPES]
    calibrated = quantize.calibrate_range(unit_d)
    cases[4:4] = [("int8 (calibrated R)", "int8", calibrated), ("uint8 (calibrated R)", "uint8", calibrated)]
    rows = []
    for label, vector_type, value_range in cases:
        stored_q = quantize.quantize(unit_q, vector_type, value_range)
        stored_d = quantize.quantize(unit_d, vector_type, value_range)
        got = top_k(
            quantize.dequantize(stored_q, vector_type, width, value_range),
            quantize.dequantize(stored_d, vector_type, width, value_range),
            k,
        )
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(got, reference)])
        kept = np.mean([ref[0] in row for ref, row in zip(reference, got)])
        scaled = vector_type in ("int8", "uint8")
        used_range = value_range if value_range is not None else quantize.default_range(width)
        rows.append(
            {
                "type": label,
                "dimensions": width,
                "bytes": int(stored_d[0].nbytes),
                "overlap": round(float(overlap), 4),
                "top1_kept": round(float(kept), 4),
                "range": round(used_range, 5) if scaled else None,
            }
        )
    # Binary retrieval, then the top RESCORE*k rescored with the int8 copies (the usual use of binary: a cheap
    # first pass): both copies stored.
    coarse = top_k(
        quantize.dequantize(quantize.quantize(unit_q, "ubinary"), "ubinary", width),
        quantize.dequantize(quantize.quantize(unit_d, "ubinary"), "ubinary", width),
        RESCORE * k,
    )
    fine_q = quantize.dequantize(quantize.quantize(unit_q, "int8"), "int8", width)
    fine_d = quantize.dequantize(quantize.quantize(unit_d, "int8"), "int8", width)
    got = np.stack(
        [
            shortlist[np.argsort(-(fine_d[shortlist] @ q), kind="stable")[:k]]
            for q, shortlist in zip(fine_q, coarse)
        ]
    )
    rows.append(
        {
            "type": f"ubinary top {RESCORE * k}, int8 rescore",
            "dimensions": width,
            "bytes": packed_bytes(width),
            "overlap": round(float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, reference)])), 4),
            "top1_kept": round(float(np.mean([ref[0] in row for ref, row in zip(reference, got)])), 4),
            "range": round(quantize.default_range(width), 5),
        }
    )
    return rows


def mean_cosine(unit: np.ndarray, sample: int = 500) -> float:
    part = unit[:sample]
    similarity = part @ part.T
    return float((similarity.sum() - np.trace(similarity)) / (len(part) * (len(part) - 1)))


def packed_bytes(width: int) -> int:
    """Bytes of one vector stored as ubinary and int8."""
    return quantize.packed_width("ubinary", width) + width


def table(rows: list[dict[str, object]], k: int) -> list[str]:
    lines = [
        f"| type | dims | bytes/vector | share of float32 | overlap@{k} | top-1 kept | int8 range R |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    float_bytes = next(int(r["bytes"]) for r in rows if r["type"] == "float32")  # type: ignore[call-overload]
    for r in rows:
        share = int(r["bytes"]) / float_bytes  # type: ignore[call-overload]
        value_range = "" if r["range"] is None else f"{r['range']}"
        lines.append(
            f"| {r['type']} | {r['dimensions']} | {r['bytes']} | {share:.3f} | {r['overlap']:.3f} | "
            f"{r['top1_kept']:.3f} | {value_range} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser("perf.experiments.compact_vectors", __doc__)
    parser.add_argument("--corpus", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--dims", default="64", help="Matryoshka sizes for the tiny model, comma-separated")
    parser.add_argument("--model-path", type=Path, default=REPO / "models" / "qwen3-vl-embedding-tiny")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    experiment = Experiment("perf.experiments.compact_vectors", argv, args.out)
    k = args.k

    rng = np.random.default_rng(args.seed)
    texts = sentences(args.corpus + args.queries, rng)
    vectors = tiny_model_vectors(args.model_path, texts)
    docs, queries = vectors[: args.corpus], vectors[args.corpus :]
    sets: dict[str, list[dict[str, object]]] = {}
    # How alike the corpus vectors are: a random model's vectors share a large common direction, which
    # leaves few informative sign bits (the binary rows).
    cosines: dict[str, float] = {}
    for dims in [0, *(int(d) for d in args.dims.split(",") if d)]:
        name = f"tiny model, {dims or docs.shape[1]} dims"
        sets[name] = agreement(queries, docs, dims or None, k)
        cosines[name] = mean_cosine(quantize.cut_normalise(docs, dims or None))
    for width in (2048, 4096):
        g_docs, g_queries = gaussian_set(width, args.corpus, args.queries, args.seed)
        sets[f"gaussian, {width} dims"] = agreement(g_queries, g_docs, None, k)
        cosines[f"gaussian, {width} dims"] = mean_cosine(g_docs)

    report = experiment.report(
        corpus=args.corpus, queries=args.queries, seed=args.seed, k=k, sets=sets, mean_cosine=cosines
    )
    experiment.write_json("compact-vectors.json", report)
    lines = experiment.heading("Compact vectors: top-10 agreement with float32, and bytes per vector", report)
    lines += [
        f"{args.corpus} corpus vectors, {args.queries} queries, seed {args.seed}; every type scored "
        "symmetrically (queries and corpus in the same type). The tiny model has random weights: these are "
        "agreement figures, not retrieval quality. `overlap@k`: share of float32's top k the type also "
        "returns; `top-1 kept`: share of queries whose float32 best result is in the type's top k.",
        "",
    ]
    for name, rows in sets.items():
        spread = f"mean cosine between two corpus vectors: {cosines[name]:.3f}"
        lines += [f"## {name}", "", spread, "", *table(rows, k), ""]
    experiment.write_markdown("compact-vectors.md", lines, echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
