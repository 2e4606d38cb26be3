import numpy as np
import pytest

from backend.errors import InputError
from backend.protocol import PreparedItem, VisionPatches
from backend.wire import pack_rows, unpack_rows


def visual(t, h, w, fill):
    return VisionPatches(patches=np.full((t * h * w, 1536), fill, dtype=np.uint8), grid_thw=(t, h, w))


def test_pack_unpack_round_trip_with_ragged_rows_and_mixed_modalities():
    rows = [
        PreparedItem(input_ids=np.arange(5, dtype=np.int64), dimensions=64),
        PreparedItem(input_ids=np.arange(9, dtype=np.int64), images=(visual(1, 2, 2, 7), visual(1, 4, 2, 9))),
        PreparedItem(
            input_ids=np.arange(3, dtype=np.int64), videos=(visual(2, 2, 4, 3),), images=(visual(1, 2, 4, 1),)
        ),
    ]
    tensors = pack_rows(rows, pad_token_id=151643)
    assert tensors["INPUT_IDS"].shape == (3, 9)
    assert tensors["IMAGE_PATCHES"].shape == (3, 12, 1536)
    assert tensors["IMAGE_GRID_THW"].shape == (3, 2, 3)
    assert tensors["VIDEO_PATCHES"].shape == (3, 16, 1536)
    back = unpack_rows(tensors)
    for original, restored in zip(rows, back):
        assert np.array_equal(original.input_ids, restored.input_ids)
        assert original.dimensions == restored.dimensions
        for a, b in ((original.images, restored.images), (original.videos, restored.videos)):
            assert [v.grid_thw for v in a] == [v.grid_thw for v in b]
            assert all(np.array_equal(x.patches, y.patches) for x, y in zip(a, b))


def test_text_only_requests_carry_no_vision_tensors():
    tensors = pack_rows([PreparedItem(input_ids=np.arange(4, dtype=np.int64))], pad_token_id=0)
    assert set(tensors) == {"INPUT_IDS", "SEQ_LEN", "EMBED_DIM"}


def test_inconsistent_tensors_are_input_errors():
    tensors = pack_rows([PreparedItem(input_ids=np.arange(4, dtype=np.int64))], pad_token_id=0)
    tensors["SEQ_LEN"] = np.array([[9]])
    with pytest.raises(InputError, match="SEQ_LEN"):
        unpack_rows(tensors)
    tensors = pack_rows(
        [PreparedItem(input_ids=np.arange(4, dtype=np.int64), images=(visual(1, 2, 2, 1),))], 0
    )
    tensors["IMAGE_GRID_THW"][0, 0] = (1, 8, 8)
    with pytest.raises(InputError, match="asks for patches that were not sent"):
        unpack_rows(tensors)
