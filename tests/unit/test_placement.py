"""Where a model-step instance runs: its index and instance count from Triton's args, its CPU threads."""

import json

import torch

from backend import triton_io
from backend.runtime import platforms as device


def args(name: str, groups, kind: str = "CPU", device_id: str = "0") -> dict:
    config = {"name": "m", "instance_group": groups}
    return {
        "model_instance_name": name,
        "model_instance_kind": kind,
        "model_instance_device_id": device_id,
        "model_config": json.dumps(config),
    }


def test_instance_index_gpu_and_count_come_from_the_args():
    assert triton_io.instance_placement(args("m_0_1", [{"count": 2, "kind": "KIND_CPU"}])) == (1, None, 2)
    two_groups = [{"count": 2, "kind": "KIND_GPU"}, {"count": 1, "kind": "KIND_GPU"}]
    assert triton_io.instance_placement(args("m_1_0", two_groups, "GPU", "3")) == (0, 3, 3)
    assert triton_io.instance_placement({"model_instance_name": "m"}) == (0, None, 1)


def test_cpu_threads_are_shared_among_instances():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        assert device.share_cpu_threads(0, 1) == 8  # one instance keeps torch's default
        assert device.share_cpu_threads(0, 3) == 2  # 8 // 3
        torch.set_num_threads(2)
        assert device.share_cpu_threads(0, 4) == 1  # never 0
        assert device.share_cpu_threads(3, 4) == 3  # an explicit number wins
    finally:
        torch.set_num_threads(before)
