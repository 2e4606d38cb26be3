"""qwen3vl: embed, compare, search and check a Qwen3-VL-Embedding server from the shell.

    qwen3vl health
    qwen3vl embed --text "The capital of China is Beijing." --image photo.jpg --video clip.mp4
    qwen3vl embed --input photos/ --input items.jsonl --out vectors      # vectors.npy + vectors.jsonl
    qwen3vl similarity --query "What is the capital of China?" --document "Beijing is the capital."
    qwen3vl search photos/ "a red car" -k 5

The server comes from --url / --protocol / --timeout, or QWEN3VL_URL / QWEN3VL_PROTOCOL / QWEN3VL_TIMEOUT
(default localhost:8000 over HTTP, localhost:8001 over gRPC).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from qwen3vl_client._core import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_QUERY_TASK,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MODEL_NAME,
    EmbeddingResult,
    Health,
)
from qwen3vl_client.client import EmbeddingClient
from qwen3vl_client.errors import EmbeddingError, ItemError
from qwen3vl_client.index import file_item, scan_folder, update_index
from qwen3vl_client.items import Item

# The vLLM-Ascend tutorial's offline example: two web-search queries against two passages.
TUTORIAL_QUERIES = ["What is the capital of China?", "Explain gravity"]
TUTORIAL_DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects "
    "and is responsible for the movement of planets around the sun.",
]
SEARCH_TASK = "Retrieve images, videos or passages relevant to the user's query"
INDEX_DIR_NAME = ".qwen3vl-index"
LABEL_CHARS = 40


class UsageError(Exception):
    """Bad command-line input found after parsing (unreadable JSONL, missing folder)."""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    server = common.add_argument_group("server")
    server.add_argument("--url", default=_env("QWEN3VL_URL"), help="host:port (env QWEN3VL_URL)")
    server.add_argument(
        "--protocol",
        choices=("http", "grpc"),
        default=_env("QWEN3VL_PROTOCOL", "http"),
        help="default http (env QWEN3VL_PROTOCOL)",
    )
    server.add_argument(
        "--timeout",
        type=float,
        default=float(_env("QWEN3VL_TIMEOUT") or DEFAULT_TIMEOUT),
        help=f"seconds per request (env QWEN3VL_TIMEOUT, default {DEFAULT_TIMEOUT:g})",
    )
    server.add_argument("--model", default=_env("QWEN3VL_MODEL", MODEL_NAME), help="env QWEN3VL_MODEL")
    server.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="items per request")
    server.add_argument("--concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY, help="requests in flight")
    server.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries on UNAVAILABLE")
    return common


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen3vl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common_options()]

    embed = commands.add_parser(
        "embed",
        parents=common,
        help="embed texts, images, videos, folders or JSONL files",
        description="Each --text, --image and --video is one item. --input takes a folder (every image, "
        "video, .txt/.md file in it is one item) or a JSONL file with one item per line: "
        '{"id": ..., "text": ..., "images": [paths], "videos": [paths], "instruction": ..., '
        '"dimensions": ...} (paths relative to the JSONL file). Writes OUT.npy and OUT.jsonl (one '
        '{"id", "row"} or {"id", "error"} per item) with --out, else prints JSON.',
    )
    embed.add_argument("--text", action="append", default=[], metavar="TEXT")
    embed.add_argument("--image", action="append", default=[], type=Path, metavar="PATH")
    embed.add_argument("--video", action="append", default=[], type=Path, metavar="PATH")
    embed.add_argument("--input", action="append", default=[], type=Path, metavar="FOLDER_OR_JSONL")
    embed.add_argument("--instruction", help="task instruction (queries); default: documents' default")
    embed.add_argument("--dimensions", type=int, default=None, help="Matryoshka size (default: full)")
    embed.add_argument("--out", type=Path, help="write OUT.npy and OUT.jsonl instead of printing JSON")
    embed.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="skip: embed the other items and list the bad ones (default: stop at the first)",
    )
    _progress_option(embed)

    similarity = commands.add_parser(
        "similarity",
        parents=common,
        help="score queries against documents",
        description="Embeds the queries with the task instruction and the documents without, and prints "
        "the cosine score matrix (rows: queries, columns: documents). Without queries and documents it "
        "runs the vLLM-Ascend tutorial's offline example.",
    )
    similarity.add_argument("--query", action="append", default=[], metavar="TEXT")
    similarity.add_argument("--query-image", action="append", default=[], type=Path, metavar="PATH")
    similarity.add_argument("--document", action="append", default=[], metavar="TEXT")
    similarity.add_argument("--document-image", action="append", default=[], type=Path, metavar="PATH")
    similarity.add_argument("--document-video", action="append", default=[], type=Path, metavar="PATH")
    similarity.add_argument("--task", default=DEFAULT_QUERY_TASK, help="the queries' instruction")
    similarity.add_argument("--dimensions", type=int, default=None)
    similarity.add_argument("--json", action="store_true", help="print the matrix as a JSON list of rows")

    search = commands.add_parser(
        "search",
        parents=common,
        help="index a folder and find the files that match queries",
        description="Embeds every image, video and .txt/.md file under FOLDER into an index (FOLDER/"
        f"{INDEX_DIR_NAME} unless --index; only new or changed files are embedded again), then prints "
        "the top-k files for each query.",
    )
    search.add_argument("folder", type=Path, metavar="FOLDER")
    search.add_argument("queries", nargs="*", metavar="QUERY", help="text queries")
    search.add_argument("--query-image", action="append", default=[], type=Path, metavar="PATH")
    search.add_argument("-k", "--top-k", type=int, default=5)
    search.add_argument("--index", type=Path, help=f"index directory (default FOLDER/{INDEX_DIR_NAME})")
    search.add_argument("--task", default=SEARCH_TASK, help="the queries' instruction")
    search.add_argument("--dimensions", type=int, default=0, help="Matryoshka size of the index (0 = full)")
    search.add_argument("--rebuild", action="store_true", help="embed every file again")
    search.add_argument("--json", action="store_true")
    _progress_option(search)

    health = commands.add_parser(
        "health", parents=common, help="server and model readiness, model configuration"
    )
    health.add_argument("--no-probe", action="store_true", help="do not embed a test text")
    health.add_argument("--json", action="store_true")
    return parser


def _client(args: argparse.Namespace) -> EmbeddingClient:
    return EmbeddingClient(
        args.url,
        args.protocol,
        model=args.model,
        batch_size=args.batch_size,
        max_concurrency=args.concurrency,
        timeout=args.timeout,
        retries=args.retries,
    )


@contextmanager
def _progress_bar(total: int, enabled: bool | None, description: str) -> Iterator[Any]:
    from tqdm import tqdm

    # disable=None lets tqdm turn itself off when stderr is not a terminal.
    disable = None if enabled is None else not enabled
    with tqdm(total=total, desc=description, unit="item", disable=disable) as bar:
        yield bar.update


def _label(item: Item) -> str:
    """A text item's text, else its description, on one short line."""
    text = item.text if item.text is not None and not (item.images or item.videos) else item.describe()
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def jsonl_items(path: Path) -> Iterator[tuple[str, Item]]:
    """(id, item) per non-blank line; media paths are relative to the JSONL file's folder."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                media = {}
                for key in ("image", "video"):
                    paths = list(record.get(f"{key}s", []))
                    if key in record:
                        paths.append(record[key])
                    media[key] = tuple(path.parent / str(medium) for medium in paths)
                item = Item(
                    text=record.get("text"),
                    images=media["image"],
                    videos=media["video"],
                    instruction=record.get("instruction"),
                    dimensions=record.get("dimensions"),
                )
            except (ValueError, TypeError) as error:
                raise UsageError(f"{path}:{number}: {error}") from error
            yield str(record.get("id", f"{path}:{number}")), item


def _embed_inputs(args: argparse.Namespace) -> tuple[list[str], list[Item]]:
    pairs: list[tuple[str, Item]] = [(text, Item(text=text)) for text in args.text]
    pairs += [(str(path), Item(images=(path,))) for path in args.image]
    pairs += [(str(path), Item(videos=(path,))) for path in args.video]
    for source in args.input:
        if source.is_dir():
            pairs += [
                (str(source / entry.path), file_item(source / entry.path, entry.kind))
                for entry in scan_folder(source)
            ]
        elif source.is_file():
            pairs += list(jsonl_items(source))
        else:
            raise UsageError(f"--input {source}: no such folder or file")
    if not pairs:
        raise UsageError("nothing to embed: give --text, --image, --video or --input")
    return [identifier for identifier, _ in pairs], [item for _, item in pairs]


def cmd_embed(args: argparse.Namespace, out: TextIO) -> int:
    ids, items = _embed_inputs(args)
    with _client(args) as client, _progress_bar(len(items), args.progress, "embedding") as progress:
        options: dict[str, Any] = {"instruction": args.instruction, "dimensions": args.dimensions}
        if args.on_error == "skip":
            result = client.embed(items, on_error="skip", progress=progress, **options)
        else:
            result = EmbeddingResult(client.embed(items, progress=progress, **options), ())
    errors = {error.index: error for error in result.errors}
    good = result.embeddings[result.ok]
    for error in result.errors:
        print(f"skipped {ids[error.index]}: {error.reason}", file=sys.stderr)
    if args.out is not None:
        prefix = args.out.with_suffix("") if args.out.suffix == ".npy" else args.out
        prefix.parent.mkdir(parents=True, exist_ok=True)
        np.save(prefix.with_name(prefix.name + ".npy"), good)
        with prefix.with_name(prefix.name + ".jsonl").open("w", encoding="utf-8") as listing:
            row = 0
            for index, identifier in enumerate(ids):
                if index in errors:
                    record: dict[str, Any] = {"id": identifier, "error": errors[index].reason}
                else:
                    record, row = {"id": identifier, "row": row}, row + 1
                listing.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(
            f"wrote {good.shape[0]} embeddings of {good.shape[1]} dimensions to {prefix}.npy, ids to "
            f"{prefix}.jsonl" + (f" ({len(errors)} failed)" if errors else ""),
            file=sys.stderr,
        )
        return 0
    document = {
        "model": args.model,
        "dimensions": int(good.shape[1]),
        "items": [
            {"id": identifier, "embedding": vector.tolist()}
            for identifier, vector in zip((i for n, i in enumerate(ids) if n not in errors), good)
        ],
        "errors": [{"id": ids[error.index], "error": error.reason} for error in result.errors],
    }
    json.dump(document, out, ensure_ascii=False)
    out.write("\n")
    return 0


def cmd_similarity(args: argparse.Namespace, out: TextIO) -> int:
    query_items = [Item(text=text) for text in args.query] + [Item(images=(p,)) for p in args.query_image]
    document_items = (
        [Item(text=text) for text in args.document]
        + [Item(images=(path,)) for path in args.document_image]
        + [Item(videos=(path,)) for path in args.document_video]
    )
    if not query_items and not document_items:
        query_items = [Item(text=text) for text in TUTORIAL_QUERIES]
        document_items = [Item(text=text) for text in TUTORIAL_DOCUMENTS]
    if not query_items or not document_items:
        raise UsageError("give both queries (--query, --query-image) and documents (--document, ...)")
    with _client(args) as client:
        queries = client.embed_queries(query_items, args.task, dimensions=args.dimensions)
        documents = client.embed(document_items, dimensions=args.dimensions)
    scores = queries @ documents.T
    if args.json:
        out.write(json.dumps(scores.tolist()) + "\n")
        return 0
    query_labels = [_label(item) for item in query_items]
    width = max(map(len, query_labels))
    header = "".join(f"  {f'doc {column}':>8}" for column in range(len(document_items)))
    out.write(" " * width + header + "\n")
    for label, row in zip(query_labels, scores):
        out.write(f"{label:<{width}}" + "".join(f"  {score:8.4f}" for score in row) + "\n")
    out.write("\n")
    for column, item in enumerate(document_items):
        out.write(f"doc {column}: {_label(item)}\n")
    return 0


def cmd_search(args: argparse.Namespace, out: TextIO) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    directory = args.index or folder / INDEX_DIR_NAME
    with _client(args) as client:

        def embed(items: list[Item]) -> tuple[np.ndarray, tuple[ItemError, ...]]:
            with _progress_bar(len(items), args.progress, "indexing") as progress:
                result = client.embed(items, dimensions=args.dimensions, on_error="skip", progress=progress)
            return result.embeddings, result.errors

        update = update_index(folder, directory, args.dimensions, embed, rebuild=args.rebuild)
        for error in update.errors:
            print(f"not indexed: {update.fresh[error.index].path}: {error.reason}", file=sys.stderr)
        print(
            f"index {directory}: {len(update.index.entries)} files ({update.embedded} embedded, "
            f"{update.reused} unchanged, {update.removed} removed, {len(update.index.failed)} unusable)",
            file=sys.stderr,
        )
        query_items = [Item(text=text) for text in args.queries]
        query_items += [Item(images=(path,)) for path in args.query_image]
        if not query_items:
            return 0
        vectors = client.embed_queries(query_items, args.task, dimensions=args.dimensions)
    matches = update.index.search(vectors, args.top_k)
    if args.json:
        answer = [
            {
                "query": item.text if item.text is not None else str(item.images[0]),
                "results": [
                    {"path": entry.path, "kind": entry.kind, "score": score} for entry, score in found
                ],
            }
            for item, found in zip(query_items, matches)
        ]
        out.write(json.dumps(answer, ensure_ascii=False) + "\n")
        return 0
    for item, found in zip(query_items, matches):
        out.write(f"{_label(item)}\n")
        for entry, score in found:
            out.write(f"  {score:7.4f}  {entry.path}\n")
    return 0


def _health_text(health: Health) -> str:
    state = {True: "ready", False: "NOT ready"}
    lines = [f"server    {health.url} ({health.protocol})"]
    if health.error and not health.server_live:
        lines.append(f"error     {health.error}")
        return "\n".join(lines)
    lines[0] += f"  live={health.server_live}  {state[health.server_ready]}  triton {health.server_version}"
    lines.append(f"model     {health.model}  {state[health.model_ready]}")
    if health.model_ready:
        lines[-1] += f"  ({health.platform}, max batch {health.max_batch_size})"
        lines.append("inputs    " + ", ".join(map(str, health.inputs)))
        lines.append("outputs   " + ", ".join(map(str, health.outputs)))
        if health.steps:
            lines.append("steps     " + ", ".join(f"{name} ({state[ready]})" for name, ready in health.steps))
    if health.dimensions is not None and health.probe_seconds is not None:
        lines.append(f"embedding {health.dimensions} dimensions (probe {health.probe_seconds * 1000:.0f} ms)")
    if health.error:
        lines.append(f"error     {health.error}")
    return "\n".join(lines)


def cmd_health(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        health = client.health(probe=not args.no_probe)
    if args.json:
        from dataclasses import asdict

        document = asdict(health)
        document["ok"] = health.ok
        out.write(json.dumps(document) + "\n")
    else:
        out.write(_health_text(health) + "\n")
    return 0 if health.ok else 1


COMMANDS = {"embed": cmd_embed, "similarity": cmd_similarity, "search": cmd_search, "health": cmd_health}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, sys.stdout)
    except BrokenPipeError:
        # Output piped into `head`: stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UsageError as error:
        print(f"qwen3vl {args.command}: {error}", file=sys.stderr)
        return 2
    except (EmbeddingError, ValueError, OSError) as error:
        print(f"qwen3vl {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
