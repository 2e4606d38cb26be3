"""The preprocess step gives the heap a large item leaves free back to the operating system."""

import os

import numpy as np

from backend.media import memory


def test_freed_heap_is_given_back():
    # A freed 32 MB block raises glibc's mmap threshold, so the next 2 MB blocks come from the heap, which
    # keeps their pages when they are freed (as after a large video) until a trim.
    np.ones(4_000_000).sum()
    blocks = [np.ones(250_000) for _ in range(100)]
    kept = blocks[::10]
    del blocks
    before = memory.resident_bytes()
    assert memory.release_freed_memory(0)
    assert before - memory.resident_bytes() > 100 * 2**20
    assert len(kept) == 10


def test_small_growth_is_not_trimmed():
    memory.release_freed_memory(0)
    assert not memory.release_freed_memory()  # nothing grew by 16 MB since


FREED_AFTER_LARGE_BLOCKS = """
import sys
import numpy as np
from backend.media import memory
if sys.argv[1] == "fixed":
    assert memory.fix_mmap_threshold()
np.ones(4_000_000).sum()  # a freed 32 MB block: glibc's sliding threshold rises to 32 MB
blocks = [np.ones(250_000 + 512 * index) for index in range(100)]  # 2 MB each, every size a new one
kept = blocks[::10]
del blocks
before = memory.resident_bytes()
print(before)
"""


def resident_after_freeing(mode: str) -> int:
    """RSS of a fresh interpreter after it freed 90 of 100 2 MB blocks (no trim)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FREED_AFTER_LARGE_BLOCKS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


def test_a_fixed_mmap_threshold_gives_large_blocks_back_when_freed():
    # The model step's tensors of ever new shapes (issue 19, item 8): without the fixed threshold the freed
    # blocks stay in the heap (the RSS grows in steps); with it each one is unmapped as it is freed.
    assert resident_after_freeing("sliding") - resident_after_freeing("fixed") > 100 * 2**20


def test_a_threshold_the_deployment_set_is_kept(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    assert not memory.fix_mmap_threshold()
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert not memory.fix_mmap_threshold()


HEAP_TOP_AFTER_FREEING = """
from backend.media import memory
import numpy as np
assert memory.fix_mmap_threshold()
blocks = [np.ones(12_500) for _ in range(400)]  # 100 KB each: under the mmap threshold, from the heap
held = memory.resident_bytes()
del blocks
print(held - memory.resident_bytes())
"""


def test_the_heap_top_is_not_given_back_at_every_free(monkeypatch):
    """Fixing the mmap threshold froze glibc's trim threshold at 128 KiB: the heap's top went back to the
    system and was faulted in again at every large free (a fixed threshold cost the first published commit
    19 % of its text rate). fix_mmap_threshold sets the trim threshold where glibc's sliding would take it,
    unless the deployment set one."""
    import subprocess
    import sys

    def returned(env: dict[str, str]) -> int:
        done = subprocess.run(
            [sys.executable, "-c", HEAP_TOP_AFTER_FREEING],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return int(done.stdout.split()[-1])

    base = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    assert returned(base) < 8 * 2**20  # 40 MB freed at the heap's top: kept
    assert returned({**base, "MALLOC_TRIM_THRESHOLD_": "131072"}) > 30 * 2**20  # glibc's default: given back
