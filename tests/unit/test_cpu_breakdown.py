"""perf.experiments.cpu_breakdown's reading of py-spy's raw stacks, and the flame graph drawn from them."""

import xml.etree.ElementTree as ElementTree

from perf.experiments.cpu_breakdown import (
    MODEL_STEP,
    PREPROCESS,
    STUB_NATIVE,
    breakdown_rows,
    split_stack,
    stage_shares,
)
from perf.lib import flamegraph

SERVER_FRAME = 'process 10:"/x/bin/tritonserver --model-repository=/r"'
PRE_FRAME = f'process 11:"/x/triton_python_backend_stub /r/{PREPROCESS}/1/model.py shm 1 2 10"'
MODEL_FRAME = f'process 12:"/x/triton_python_backend_stub /r/{MODEL_STEP}/1/model.py shm 1 2 10"'

RAW = "\n".join(
    [
        f"{SERVER_FRAME};{PRE_FRAME};execute (model.py:20);plain_ids (backend/text/tokenization.py:80) 6",
        f"{SERVER_FRAME};{PRE_FRAME};execute (model.py:20);record (backend/metrics.py:200) 2",
        f"{SERVER_FRAME};{PRE_FRAME} 2",
        f"{SERVER_FRAME};{MODEL_FRAME};_run (backend/runtime/scheduler.py:247);"
        "collate (backend/runtime/backbone.py:124) 1",
        f"{SERVER_FRAME};{MODEL_FRAME};_run (backend/runtime/scheduler.py:247);"
        "forward (transformers/models/qwen3_vl/modeling_qwen3_vl.py:900) 3",
    ]
)


def test_stacks_are_split_by_step_and_stage(tmp_path):
    role, frames = split_stack(f"{SERVER_FRAME};{PRE_FRAME};execute (model.py:20)")
    assert role == PREPROCESS and frames == ["execute (model.py:20)"]
    raw = tmp_path / "profile.raw"
    raw.write_text(RAW + "\n")
    shares, stacks = stage_shares(raw)
    assert shares[PREPROCESS] == {"tokenise (tokenizers)": 0.6, "metrics": 0.2, STUB_NATIVE: 0.2}
    assert shares[MODEL_STEP] == {"forward: language model": 0.75, "collate": 0.25}
    assert all(stack.split(";")[0] in (PREPROCESS, MODEL_STEP) for stack, _ in stacks)  # instances merged
    rows = breakdown_rows({"tritonserver": 1.0, PREPROCESS: 10.0, MODEL_STEP: 20.0}, shares)
    assert rows[0][1:] == ("Triton", 1.0)
    assert ("preprocess: tokenise (tokenizers)", "ours", 6.0) in rows
    assert ("model step: forward: language model", "torch / transformers", 15.0) in rows
    assert (f"preprocess: {STUB_NATIVE}", "Triton (stub)", 2.0) in rows


def test_the_flame_graph_is_plain_svg_with_every_frame_titled(tmp_path):
    raw = tmp_path / "profile.raw"
    raw.write_text(RAW + "\n")
    _, stacks = stage_shares(raw)
    picture = flamegraph.svg(stacks, "a <title> & more")
    root = ElementTree.fromstring(picture)
    titles = [element.text for element in root.iter("{http://www.w3.org/2000/svg}title")]
    assert titles[0].startswith("all — 14 samples")
    assert any(title.startswith("collate (backend/runtime/backbone.py:124) — 1 samples") for title in titles)
