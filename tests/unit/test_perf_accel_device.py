"""`make perf-accel` runs `python -m perf.accel --device auto`: the entry point imports and resolves `auto`
through backend.runtime.platforms' current API (a removed name there once made it raise ImportError)."""

import torch

from perf.accel import resolve_device


def test_auto_resolves_to_the_platforms_choice():
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected


def test_an_explicit_device_is_kept():
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("cpu") == "cpu"
