"""``qwen3vl ui --index DIR``: the search page, served on this machine."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

DEFAULT_PORT = 8090
DESCRIPTION = """Serves a search page over DIR: type a query or drop an image, and see the best rows as
thumbnails (an image, a frame of a video, the start of a text) with their scores, optionally reranked by the
reranker, and how long the query took. DIR is a directory written by `qwen3vl index` (then --source names
the folder or table it was built from, for thumbnails and reranking) or the index of `qwen3vl search`. The
page sees what a running `qwen3vl index` commits. It listens on 127.0.0.1 unless --host says otherwise."""


def add_ui_parser(commands: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    ui = commands.add_parser(
        "ui", parents=parents, help="a search page over an index, in the browser", description=DESCRIPTION
    )
    ui.add_argument("--index", type=Path, required=True, metavar="DIR", help="the index directory")
    ui.add_argument(
        "--source", type=Path, metavar="SOURCE", help="the folder or table DIR was built from (qwen3vl index)"
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ui.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free port"
    )
    ui.add_argument("-k", "--top-k", type=int, default=12, help="results shown at first (default 12)")
    ui.add_argument(
        "--rerank-candidates",
        type=int,
        default=20,
        metavar="N",
        help="rows the reranker scores when reranking is on (default 20)",
    )
    ui.add_argument("--task", default=None, help="the queries' instruction (default: qwen3vl search's)")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def cmd_ui(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    import uvicorn

    from qwen3vl_client.aio import AsyncEmbeddingClient
    from qwen3vl_client.cli import SEARCH_TASK
    from qwen3vl_client.options import command_line_arguments
    from qwen3vl_client.ui.app import MAX_K, PageOptions, SearchPage
    from qwen3vl_client.ui.corpus import Corpus, CorpusError

    if not 1 <= args.top_k <= MAX_K or args.rerank_candidates < 1:
        print(f"qwen3vl ui: -k must be 1 to {MAX_K} and --rerank-candidates positive", file=sys.stderr)
        return 2
    try:
        corpus = Corpus(args.index, args.source)
        summary = corpus.summary
    except CorpusError as error:
        print(f"qwen3vl ui: {error}", file=sys.stderr)
        return 2
    if summary.kind == "bulk" and args.source is None:
        print("qwen3vl ui: no --source: results show ids only and cannot be reranked", file=sys.stderr)

    def make_client() -> AsyncEmbeddingClient:
        return AsyncEmbeddingClient(**command_line_arguments(args))

    options = PageOptions(args.task or SEARCH_TASK, args.top_k, args.rerank_candidates)
    page = SearchPage(corpus, make_client, options)
    try:
        sock = _listen(args.host, args.port)
    except OSError as error:
        print(f"qwen3vl ui: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"qwen3vl ui: http://{shown}:{port}/ searches {args.index} ({summary.items} items); Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(page.app(), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0
