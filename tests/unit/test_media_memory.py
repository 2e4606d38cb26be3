"""The preprocess step gives the heap a large item leaves free back to the operating system."""

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
