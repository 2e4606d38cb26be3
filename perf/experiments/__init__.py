"""Named experiments: one-off measurements whose results are in perf/results (each writes its command,
commit and host load next to them); not behind a make target."""
