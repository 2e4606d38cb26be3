"""The README's and docs/' shell and Python examples, run against a real tritonserver and gateway.

Every ```bash and ```python block runs, unless an HTML comment right above it says
``<!-- not run: reason -->`` (a GPU, Docker, a cluster, `make serve` itself); ```text and ```console blocks
are output or commands that never run. ``<!-- expect: text -->`` above a block names text its output must
contain. The blocks run in page order in one scratch directory (the examples write media/, vectors.json,
...), with the documented ports replaced by the test server's.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FENCE = re.compile(r"^```(\w*)\s*$")
COMMENT = re.compile(r"^<!--\s*(not run|expect):\s*(.*?)\s*-->$")
RUN_LANGUAGES = ("bash", "python")
# Below this many runnable blocks the test has stopped testing the docs (a parser or marker gone wrong).
MIN_BLOCKS_RUN = 20


def _nav_pages() -> list[str]:
    """docs/ pages in mkdocs.yml's nav order."""
    text = (REPO / "mkdocs.yml").read_text()
    return [f"docs/{name}" for name in re.findall(r"^\s+- [^:]+: (\S+\.md)\s*$", text, re.M)]


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    code: str
    not_run: str | None
    expect: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    found: list[Block] = []
    lines = (REPO / page).read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        start = index
        end = start + 1
        while not lines[end].startswith("```"):
            end += 1
        not_run, expect = None, []
        above = start - 1
        while above >= 0 and (comment := COMMENT.match(lines[above].strip())):
            if comment.group(1) == "not run":
                not_run = comment.group(2)
            else:
                expect.append(comment.group(2))
            above -= 1
        code = "\n".join(lines[start + 1 : end]) + "\n"
        found.append(Block(page, start + 1, match.group(1), code, not_run, tuple(expect)))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in ["README.md", *_nav_pages()] for block in blocks(page)]


def runnable() -> list[Block]:
    return [block for block in all_blocks() if block.language in RUN_LANGUAGES and block.not_run is None]


def test_every_example_is_run_or_says_why_not():
    every = all_blocks()
    for block in every:
        assert block.language, f"{block.id}: a code block without a language (bash, python, text, ...)"
        if block.not_run is not None:
            assert block.not_run, f"{block.id}: `not run` without a reason"
            assert block.language in RUN_LANGUAGES, f"{block.id}: only bash and python blocks are run anyway"
    assert len(runnable()) >= MIN_BLOCKS_RUN, [block.id for block in runnable()]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, server, gateway):
    """A working directory that looks like the checkout to the examples: .venv, and the media the README
    makes (so that any one block can run alone)."""
    directory = tmp_path_factory.mktemp("docs-examples")
    (directory / ".venv").symlink_to(REPO / ".venv")
    environment = _environment(server, gateway)
    media = next(block for block in blocks("README.md") if "mkdir -p media" in block.code)
    _run(media, directory, environment, _ports(server, gateway))
    return directory, environment, _ports(server, gateway)


def _ports(server, gateway) -> dict[str, str]:
    http = server.http_url.split("://")[-1]
    return {
        "localhost:8000": http,
        "localhost:8001": server.grpc_url.split("://")[-1],
        "localhost:8002": server.metrics_url.split("://")[-1],
        "localhost:9000": f"127.0.0.1:{gateway.port}",
        "127.0.0.1:9000": f"127.0.0.1:{gateway.port}",
        "127.0.0.1:8000": http,
    }


def _environment(server, gateway) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("QWEN3VL_")}
    # The qwen3vl command's default server: the gateway's KServe v2 REST.
    environment["QWEN3VL_URL"] = f"127.0.0.1:{gateway.port}"
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def _run(block: Block, directory: Path, environment: dict[str, str], ports: dict[str, str]):
    code = block.code
    for documented, actual in ports.items():
        code = code.replace(documented, actual)
    if block.language == "bash":
        # curl -s answers 0 for an HTTP error; --fail-with-body makes it fail and still print the body.
        code = re.sub(r"\bcurl ", "curl --fail-with-body ", code)
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        command = [sys.executable, "-c", code]
    return subprocess.run(
        command, cwd=directory, env=environment, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("block", runnable(), ids=lambda block: block.id)
def test_example_runs_and_prints_what_the_docs_say(block, scratch):
    directory, environment, ports = scratch
    result = _run(block, directory, environment, ports)
    assert result.returncode == 0, (
        f"{block.id} failed:\n{block.code}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    for text in block.expect:
        assert text in result.stdout, f"{block.id}: {text!r} not in its output:\n{result.stdout[-3000:]}"
