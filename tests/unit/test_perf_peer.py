"""perf.peer: its arguments, and a missing peer venv is a report, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from perf.peer import PEER_WORKLOADS, parse_args, probe


def test_defaults_measure_text_and_images_three_times():
    args = parse_args([])
    assert (args.workloads, args.repetitions, args.concurrency) == (list(PEER_WORKLOADS), 3, 32)


@pytest.mark.parametrize("argv", [["--workloads", "text_mixed"], ["--repetitions", "0"], ["--items", "0"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_a_missing_peer_venv_is_reported_not_raised(tmp_path: Path):
    ok, why = probe(tmp_path / "no-venv" / "bin" / "python", tmp_path)
    assert not ok and "no peer venv" in why
