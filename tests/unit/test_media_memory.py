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


FREED_BLOCKS = """
import sys
import numpy as np
from backend.media import memory
assert memory.fix_mmap_threshold()
size, count = int(sys.argv[1]), int(sys.argv[2])
start = memory.resident_bytes()
blocks = [np.ones(size // 8 + 64 * index) for index in range(count)]  # every size a new one
held = memory.resident_bytes()
del blocks
print(held - start, held - memory.resident_bytes())
"""


def held_and_given_back(size: int, count: int) -> tuple[int, int]:
    """(bytes the blocks added to the RSS, bytes given back once they were freed), in a fresh interpreter
    with the model step's mmap threshold."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FREED_BLOCKS, str(size), str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    held, returned = done.stdout.split()
    return int(held), int(returned)


def test_the_model_steps_threshold_keeps_activations_for_reuse_and_gives_huge_blocks_back():
    """Activations under 32 MiB stay in the heaps when freed, so the next forward reuses their pages
    instead of faulting them in again (at 256 KiB the bench checkpoint's forward cost 1.3-1.6x the CPU);
    blocks of 32 MiB or more are unmapped when freed."""
    held, returned = held_and_given_back(2 * 2**20, 20)  # 40 MB of 2 MB activations
    assert held > 30 * 2**20 and returned < 8 * 2**20
    held, returned = held_and_given_back(40 * 2**20, 5)  # 200 MB of 40 MB blocks
    assert held > 150 * 2**20 and returned > 150 * 2**20


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
