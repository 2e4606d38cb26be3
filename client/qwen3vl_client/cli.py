"""qwen3vl: embed, compare, search and check a Qwen3-VL-Embedding server from the shell.

    qwen3vl health
    qwen3vl embed --text "The capital of China is Beijing." --image photo.jpg --video clip.mp4
    qwen3vl embed --input photos/ --input items.jsonl --out vectors      # vectors.npy + vectors.jsonl
    qwen3vl similarity --query "What is the capital of China?" --document "Beijing is the capital."
    qwen3vl search photos/ "a red car" -k 5
    qwen3vl rerank --query "What is the capital of China?" --document "Beijing." --input photos/ -k 3
    qwen3vl index photos/ --out photos.index --dtype int8                # resumable bulk job
    qwen3vl ui --index photos.index --source photos/                     # a search page on :8090

The server comes from --url / --protocol / --timeout, or QWEN3VL_URL / QWEN3VL_PROTOCOL / QWEN3VL_TIMEOUT
(default localhost:9000 over HTTP, the gateway; localhost:8001 over gRPC), the reranker from
--reranker-model or QWEN3VL_RERANKER_MODEL; these options go before the command or after it.
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

from qwen3vl_client.bulk.command import add_index_parser, cmd_index
from qwen3vl_client.client import EmbeddingClient
from qwen3vl_client.errors import EmbeddingError, ItemError
from qwen3vl_client.index import file_item, scan_folder, update_index
from qwen3vl_client.items import Item
from qwen3vl_client.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_QUERY_TASK,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MODEL_NAME,
    RERANKER_MODEL_NAME,
    command_line_arguments,
)
from qwen3vl_client.results import EmbeddingResult, Health, ModelStatus, RerankResult
from qwen3vl_client.ui.command import add_ui_parser, cmd_ui

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
ID_CHARS = 72


class UsageError(Exception):
    """Bad command-line input found after parsing (unreadable JSONL, missing folder)."""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: a flag it does not know is its own error, shown with its own usage
    (argparse hands unknown flags up to the top-level parser, whose usage lists none of the
    subcommand's)."""

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; same signature at runtime
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _server_options(defaults: bool) -> _CommandParser:
    """The server options, accepted before the command (``qwen3vl --url X health``) and after it. Only
    the top-level parser holds the defaults: argparse copies everything a subcommand's parser sets over
    what was parsed before the command, so there an option absent from the command line sets nothing.
    (A ``_CommandParser`` only because typeshed wants a subcommand's parents of its parser class.)"""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    common = _CommandParser(add_help=False)
    server = common.add_argument_group("server")
    server.add_argument("--url", default=default(_env("QWEN3VL_URL")), help="host:port (env QWEN3VL_URL)")
    server.add_argument(
        "--protocol",
        choices=("http", "grpc"),
        default=default(_env("QWEN3VL_PROTOCOL", "http")),
        help="default http (env QWEN3VL_PROTOCOL)",
    )
    server.add_argument(
        "--timeout",
        type=float,
        default=default(float(_env("QWEN3VL_TIMEOUT") or DEFAULT_TIMEOUT)),
        help=f"seconds per request (env QWEN3VL_TIMEOUT, default {DEFAULT_TIMEOUT:g})",
    )
    server.add_argument(
        "--model", default=default(_env("QWEN3VL_MODEL", MODEL_NAME)), help="env QWEN3VL_MODEL"
    )
    server.add_argument(
        "--reranker-model",
        default=default(_env("QWEN3VL_RERANKER_MODEL", RERANKER_MODEL_NAME)),
        help=f"env QWEN3VL_RERANKER_MODEL, default {RERANKER_MODEL_NAME}",
    )
    server.add_argument(
        "--batch-size", type=int, default=default(DEFAULT_BATCH_SIZE), help="items per request"
    )
    server.add_argument(
        "--concurrency", type=int, default=default(DEFAULT_MAX_CONCURRENCY), help="requests in flight"
    )
    server.add_argument(
        "--retries", type=int, default=default(DEFAULT_RETRIES), help="retries on UNAVAILABLE"
    )
    return common


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


class _Ordered(argparse.Action):
    """Appends (kind, value) to one list, so that documents keep their command-line order."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=None, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        # A fresh list: argparse shares the default between parses.
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), (self.const, values)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen3vl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_server_options(defaults=True)],
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )
    common = [_server_options(defaults=False)]

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
        "the top-k files for each query. `search QUERY... --index DIR`, where DIR was built by `qwen3vl "
        "index`, searches that index (its vector database) instead: every positional is a query.",
    )
    search.add_argument("folder", metavar="FOLDER")
    search.add_argument("queries", nargs="*", metavar="QUERY", help="text queries")
    search.add_argument("--query-image", action="append", default=[], type=Path, metavar="PATH")
    search.add_argument("-k", "--top-k", type=int, default=5)
    search.add_argument("--index", type=Path, help=f"index directory (default FOLDER/{INDEX_DIR_NAME})")
    search.add_argument("--task", default=SEARCH_TASK, help="the queries' instruction")
    search.add_argument("--dimensions", type=int, default=0, help="Matryoshka size of the index (0 = full)")
    search.add_argument("--rebuild", action="store_true", help="embed every file again")
    search.add_argument("--json", action="store_true")
    _progress_option(search)

    rerank = commands.add_parser(
        "rerank",
        parents=common,
        help="rank documents by relevance to a query with the reranker",
        description="Scores each document against the query with the reranker model and prints them best "
        "first. The query is one item (--query text plus any --query-image/--query-video); each --document, "
        "--document-image and --document-video is one document, and --input adds a folder (every image, "
        "video, .txt/.md file) or a JSONL file (one document per line: id, text, images, videos), in "
        "command-line order.",
    )
    rerank.add_argument("--query", metavar="TEXT", help="the query's text")
    rerank.add_argument("--query-image", action="append", default=[], type=Path, metavar="PATH")
    rerank.add_argument("--query-video", action="append", default=[], type=Path, metavar="PATH")
    for flag, kind, metavar in (
        ("--document", "text", "TEXT"),
        ("--document-image", "image", "PATH"),
        ("--document-video", "video", "PATH"),
        ("--input", "input", "FOLDER_OR_JSONL"),
    ):
        rerank.add_argument(flag, dest="documents", action=_Ordered, const=kind, default=[], metavar=metavar)
    rerank.add_argument("--instruction", help="the task (default: the reranker's)")
    rerank.add_argument("-k", "--top-k", type=int, default=None, help="print only the best K")
    rerank.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="skip: rank the other documents and list the bad ones (default: stop at the first)",
    )
    rerank.add_argument("--json", action="store_true")
    _progress_option(rerank)

    health = commands.add_parser(
        "health", parents=common, help="server, embedding and reranker readiness, model configuration"
    )
    health.add_argument("--no-probe", action="store_true", help="do not embed a test text")
    health.add_argument("--json", action="store_true")
    add_index_parser(commands, common)
    add_ui_parser(commands, common)
    return parser


def _client(args: argparse.Namespace) -> EmbeddingClient:
    return EmbeddingClient(**command_line_arguments(args))


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


def _source_items(source: Path) -> list[tuple[str, Item]]:
    """(id, item) for an --input: every file of a folder, or every line of a JSONL file."""
    if source.is_dir():
        return [
            (str(source / entry.path), file_item(source / entry.path, entry.kind))
            for entry in scan_folder(source)
        ]
    if source.is_file():
        return list(jsonl_items(source))
    raise UsageError(f"--input {source}: no such folder or file")


def _embed_inputs(args: argparse.Namespace) -> tuple[list[str], list[Item]]:
    pairs: list[tuple[str, Item]] = [(text, Item(text=text)) for text in args.text]
    pairs += [(str(path), Item(images=(path,))) for path in args.image]
    pairs += [(str(path), Item(videos=(path,))) for path in args.video]
    for source in args.input:
        pairs += _source_items(source)
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
    from qwen3vl_client.bulk.search import is_index

    if args.index is not None and is_index(args.index):
        return _search_index(args, out)
    folder = Path(args.folder)
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


def _search_index(args: argparse.Namespace, out: TextIO) -> int:
    """``search QUERY... --index DIR`` over an index that ``qwen3vl index`` built."""
    from qwen3vl_client.bulk.command import DB_TOKEN_ENV
    from qwen3vl_client.bulk.search import search

    query_items = [Item(text=text) for text in [args.folder, *args.queries]]
    query_items += [Item(images=(path,)) for path in args.query_image]
    token = os.environ.get(DB_TOKEN_ENV) or None
    with _client(args) as client:
        found = [search(args.index, item, args.top_k, client, args.task, token) for item in query_items]
    if args.json:
        answer = [
            {
                "query": item.text if item.text is not None else str(item.images[0]),
                "results": [
                    {"id": hit.id, "score": hit.score, "modality": hit.modality, "path": hit.path}
                    for hit in hits
                ],
            }
            for item, hits in zip(query_items, found)
        ]
        out.write(json.dumps(answer, ensure_ascii=False) + "\n")
        return 0
    for item, hits in zip(query_items, found):
        out.write(f"{_label(item)}\n")
        for hit in hits:
            out.write(f"  {hit.score:7.4f}  {hit.id}\n")
    return 0


def _rerank_documents(args: argparse.Namespace) -> tuple[list[str], list[Item]]:
    pairs: list[tuple[str, Item]] = []
    for kind, value in args.documents:
        if kind == "text":
            pairs.append((value, Item(text=value)))
        elif kind == "image":
            pairs.append((value, Item(images=(Path(value),))))
        elif kind == "video":
            pairs.append((value, Item(videos=(Path(value),))))
        else:
            pairs += _source_items(Path(value))
    if not pairs:
        raise UsageError("no documents: give --document, --document-image, --document-video or --input")
    return [identifier for identifier, _ in pairs], [item for _, item in pairs]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ID_CHARS else text[: ID_CHARS - 1] + "…"


def cmd_rerank(args: argparse.Namespace, out: TextIO) -> int:
    query = Item(text=args.query, images=tuple(args.query_image), videos=tuple(args.query_video))
    if not (query.text or query.images or query.videos):
        raise UsageError("no query: give --query, --query-image or --query-video")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"-k must be at least 1, got {args.top_k}")
    ids, documents = _rerank_documents(args)
    with _client(args) as client, _progress_bar(len(documents), args.progress, "reranking") as progress:
        result: RerankResult = client.rerank(
            query,
            documents,
            instruction=args.instruction,
            top_k=args.top_k,
            on_error=args.on_error,
            progress=progress,
        )
    for error in result.errors:
        print(f"skipped {ids[error.index]}: {error.reason}", file=sys.stderr)
    ranked = result.top()
    if args.json:
        document = {
            "model": args.reranker_model,
            "query": {
                "text": args.query,
                "images": [str(path) for path in args.query_image],
                "videos": [str(path) for path in args.query_video],
            },
            "results": [
                {"rank": rank, "index": index, "id": ids[index], "score": score}
                for rank, (index, score) in enumerate(ranked, 1)
            ],
            "errors": [{"index": e.index, "id": ids[e.index], "error": e.reason} for e in result.errors],
        }
        out.write(json.dumps(document, ensure_ascii=False) + "\n")
        return 0
    width = max(3, len(str(len(documents) - 1)))
    out.write(f"query: {_label(query)}\n")
    out.write(f"{'rank':>4}  {'score':>6}  {'doc':>{width}}  document\n")
    for rank, (index, score) in enumerate(ranked, 1):
        out.write(f"{rank:>4}  {score:6.4f}  {index:>{width}}  {_short(ids[index])}\n")
    return 0


def _model_lines(label: str, status: ModelStatus) -> list[str]:
    state = {True: "ready", False: "NOT ready"}
    lines = [f"{label:<10}{status.name}  {state[status.ready]}"]
    if status.ready:
        lines[-1] += f"  ({status.platform}, max batch {status.max_batch_size})"
        lines.append("inputs    " + ", ".join(map(str, status.inputs)))
        lines.append("outputs   " + ", ".join(map(str, status.outputs)))
        if status.steps:
            lines.append("steps     " + ", ".join(f"{name} ({state[ready]})" for name, ready in status.steps))
    return lines


def _health_text(health: Health) -> str:
    state = {True: "ready", False: "NOT ready"}
    lines = [f"server    {health.url} ({health.protocol})"]
    if health.error and not health.server_live:
        lines.append(f"error     {health.error}")
        return "\n".join(lines)
    lines[0] += f"  live={health.server_live}  {state[health.server_ready]}  triton {health.server_version}"
    lines += _model_lines("model", health.embedding)
    if health.dimensions is not None and health.probe_seconds is not None:
        lines.append(f"embedding {health.dimensions} dimensions (probe {health.probe_seconds * 1000:.0f} ms)")
    if health.reranker is not None:
        lines += _model_lines("reranker", health.reranker)
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


COMMANDS = {
    "embed": cmd_embed,
    "similarity": cmd_similarity,
    "search": cmd_search,
    "rerank": cmd_rerank,
    "health": cmd_health,
    "index": cmd_index,
    "ui": cmd_ui,
}


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
