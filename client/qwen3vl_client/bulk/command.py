"""``qwen3vl index SOURCE --out DIR``: the bulk job from the shell."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from qwen3vl_client.bulk.job import (
    DEFAULT_ROWS_PER_SHARD,
    JobOptions,
    Progress,
    dry_run_text,
    make_plan,
    run,
    usage_table,
)
from qwen3vl_client.bulk.quantize import VECTOR_TYPES
from qwen3vl_client.bulk.sources import FileDigests, SourceError, parse_shard, records
from qwen3vl_client.bulk.store import Manifest, Store, StoreError
from qwen3vl_client.bulk.vectordb import (
    DEFAULT_COLLECTION,
    NO_DATABASE,
    DatabaseError,
    Mirror,
    VectorDatabase,
    check_collection,
    resolve_uri,
)

DB_TOKEN_ENV = "QWEN3VL_DB_TOKEN"  # a Milvus server's token (user:password or an API key); never written down

DESCRIPTION = """Embeds every item of SOURCE into DIR: vector shards, manifest.json and
errors.jsonl (with --shard I/N: files tagged .I-of-N, so N workers can share DIR). SOURCE is a folder
(every image, video, .txt/.md file; id = its relative path) or a .jsonl/.csv/.parquet table (columns id,
text, image, video, instruction; media paths relative to the table, or bytes in Parquet). The vectors also
go into a vector database (a Milvus Lite file in DIR, or a Milvus server with --db-uri) that
`qwen3vl search QUERY --index DIR` queries. Run the same command again to resume:
items already in DIR are not sent again, and content already embedded under another id is copied.
Items the server rejects go to the errors file."""


def add_index_parser(commands: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    index = commands.add_parser(
        "index",
        parents=parents,
        help="embed a folder or table into a resumable index",
        description=DESCRIPTION,
    )
    index.add_argument("source", type=Path, metavar="SOURCE")
    index.add_argument("--out", type=Path, required=True, metavar="DIR")
    index.add_argument("--shard", default="0/1", metavar="I/N", help="this worker's part, 0 <= I < N")
    index.add_argument("--dtype", choices=VECTOR_TYPES, default="float32", help="stored vector type")
    index.add_argument("--dimensions", type=int, default=0, help="Matryoshka size (0 = full)")
    index.add_argument(
        "--int8-range", type=float, default=None, metavar="R", help="int8/uint8 range (default 4/sqrt(d))"
    )
    index.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD, metavar="N")
    index.add_argument("--retry-errors", action="store_true", help="send the items in the errors file again")
    index.add_argument("--dry-run", action="store_true", help="count what a run would do; send nothing")
    index.add_argument("--json", action="store_true", help="print the report as JSON")
    index.add_argument(
        "--db-uri",
        default=None,
        metavar="URI",
        help="vector database: http(s)://HOST[:PORT] (a Milvus server, port 19530 by default; token in "
        f"${DB_TOKEN_ENV}), FILE.db (Milvus Lite) or '{NO_DATABASE}' (Parquet shards only); default: a "
        "Milvus Lite file in DIR",
    )
    index.add_argument("--db-collection", default=DEFAULT_COLLECTION, metavar="NAME", help="its collection")
    index.add_argument(
        "--priority",
        choices=("bulk", "interactive"),
        default="bulk",
        help="requests' priority class: bulk (default) is served after interactive queries, never starved",
    )
    index.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress line on stderr (default: live on a terminal, else every 30 s)",
    )


def cmd_index(args: argparse.Namespace, out: TextIO) -> int:
    from qwen3vl_client.bulk.embedder import ClientEmbedder
    from qwen3vl_client.client import EmbeddingClient
    from qwen3vl_client.options import command_line_arguments

    try:
        shard = parse_shard(args.shard)
        if args.rows_per_shard < 1 or args.dimensions < 0:
            raise ValueError("--rows-per-shard must be positive and --dimensions 0 or positive")
        options = JobOptions(
            args.model, args.dimensions, args.dtype, args.int8_range, args.rows_per_shard, args.retry_errors
        )
        uri = resolve_uri(args.db_uri, args.out, "" if shard == (0, 1) else f".{shard[0]}-of-{shard[1]}")
        collection = check_collection(args.db_collection)
        store = Store(args.out, shard)
        if store.open(options.settings(), create=not args.dry_run) is None:
            store.manifest = Manifest(shard, options.settings())
        digests = FileDigests(store.load_digests())
        plan = make_plan(records(args.source), store, shard, args.retry_errors, digests)
        if digests.changed and not args.dry_run:
            store.save_digests(digests.known)
    except (SourceError, StoreError, ValueError) as error:
        print(f"qwen3vl index: {error}", file=sys.stderr)
        return 2
    for identifier in plan.duplicate_ids:
        print(f"qwen3vl index: id {identifier!r} repeats; only its first row is indexed", file=sys.stderr)
    if args.dry_run:
        out.write(dry_run_text(plan, store, args.source) + "\n")
        return 0

    def make_client(concurrency: int) -> EmbeddingClient:
        return EmbeddingClient(
            **command_line_arguments(args, max_concurrency=concurrency, priority=args.priority)
        )

    if plan.pending:
        with make_client(1) as client:
            health = client.health(probe=True)
        if not health.ok:
            print(f"qwen3vl index: server not ready: {health.error or health.url}", file=sys.stderr)
            return 1
        if args.dimensions and health.dimensions and args.dimensions > health.dimensions:
            print(f"qwen3vl index: the model has {health.dimensions} dimensions", file=sys.stderr)
            return 2
    manifest = store.manifest
    assert manifest is not None
    database = None
    try:
        source = str(args.source.absolute())
        if uri is not None:
            # A search holds the Lite file for a moment; wait that out rather than fail.
            database = VectorDatabase(uri, collection, os.environ.get(DB_TOKEN_ENV) or None, busy_wait=30.0)
        where = None if uri is None else {"uri": stored_uri(uri, args.out), "collection": collection}
        if (manifest.database, manifest.source) != (where, source):
            manifest.database, manifest.source = where, source
            store.commit(None)
        mirror = None if database is None else Mirror(database, shard, plan.paths)
        progress = Progress(len(plan.pending), sys.stderr, args.progress)
        # run() closes the embedder in the thread that used it (its HTTP client is bound to that thread).
        embedder = ClientEmbedder(make_client, args.concurrency)
        report = run(plan, store, embedder, options, lambda d, f, t: progress.update(d, f, t), mirror)
    except DatabaseError as error:
        print(f"qwen3vl index: {error}", file=sys.stderr)
        return 1
    finally:
        if database is not None:
            database.close()
    progress.update(0, 0, 0, final=True)
    embedded = report.embedded
    rate = embedded / report.seconds if report.seconds > 0 else 0.0
    if args.json:
        document = {
            "out": str(args.out),
            "shard": args.shard,
            "items": plan.total,
            "already_indexed": plan.done,
            "known_errors": plan.known_errors,
            "embedded": embedded,
            "seconds": round(report.seconds, 3),
            "items_per_second": round(rate, 2),
            "usage": report.usage.as_dict(),
            "total_usage": manifest.usage,
            "errors": len(manifest.errors),
            "database": manifest.database,
        }
        out.write(json.dumps(document) + "\n")
        return 0
    out.write(
        f"index {args.out} ({args.shard}): {plan.total} items, {plan.done} already indexed, "
        f"{embedded} embedded in {report.seconds:.1f} s ({rate:.1f} items/s), "
        f"{len(manifest.errors)} in {store.errors_path.name}\n"
    )
    out.write("this run:\n" + usage_table(report.usage.as_dict()) + "\n")
    out.write("whole index (this worker):\n" + usage_table(manifest.usage) + "\n")
    return 0


def stored_uri(uri: str, directory: Path) -> str:
    """The database URI as the manifest keeps it: a Milvus Lite file inside the index directory by its
    name (the directory can move), anything else as given."""
    if "://" not in uri and Path(uri).parent == directory.resolve():
        return Path(uri).name
    return uri
