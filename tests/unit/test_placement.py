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


def test_cpu_lanes_split_the_threads_into_forwards_that_run_at_once():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert device.cpu_lane_count(0, 1, 0) == 2  # one lane per thread
        assert device.share_cpu_threads(0, 1, 2) == 1  # each forward on one thread
        torch.set_num_threads(16)
        assert device.cpu_lane_count(0, 1, 0) == device.MAX_AUTO_LANES
        assert device.share_cpu_threads(0, 1, 4) == 4
        torch.set_num_threads(16)
        assert device.cpu_lane_count(0, 2, 0) == 4  # 8 threads per instance, 4 lanes of 2
        assert device.cpu_lane_count(8, 1, 3) == 3  # an explicit number wins
        assert device.share_cpu_threads(8, 1, 3) == 2
        torch.set_num_threads(2)
        assert device.cpu_lane_count(0, 2, 0) == 1  # an instance per core: one forward on its core
        assert device.share_cpu_threads(0, 2, 1) == 1
        assert device.Platform(torch.device("cpu")).activate(0, 1, 1) == 1
    finally:
        torch.set_num_threads(before)
