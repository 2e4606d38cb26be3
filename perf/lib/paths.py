"""Where things are: the checkout, its model repository and perf's results (no imports, so that
`python -m perf.device` can use it before anything is installed)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO / "model_repository"
RESULTS = REPO / "perf" / "results"
