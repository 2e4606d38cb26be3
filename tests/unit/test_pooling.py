import torch

from backend.embedding.model import matryoshka
from backend.runtime.backbone import last_token_pool


def test_last_token_pool_uses_each_rows_last_real_token_under_right_padding():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    pooled = last_token_pool(hidden, torch.tensor([3, 5]))
    assert torch.equal(pooled[0], hidden[0, 2])
    assert torch.equal(pooled[1], hidden[1, 4])
    # Pooling position -1 would have taken a pad token for row 0.
    assert not torch.equal(pooled[0], hidden[0, -1])


def test_matryoshka_keeps_the_prefix_and_renormalises():
    vector = torch.nn.functional.normalize(
        torch.randn(256, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    cut = matryoshka(vector, 64)
    assert cut.shape == (64,)
    assert torch.allclose(cut.norm(), torch.tensor(1.0))
    assert torch.allclose(cut, torch.nn.functional.normalize(vector[:64], dim=-1))
    assert matryoshka(vector, 0) is vector
    assert matryoshka(vector, 256) is vector


def test_linear_patch_embed_equals_the_conv3d_it_replaces(tiny_model_path):
    from backend.runtime.backbone import load_backbone
    from backend.runtime.platforms import LinearPatchEmbed

    model = load_backbone(str(tiny_model_path), torch.float32, "sdpa", torch.device("cpu"))
    conv_embed = model.visual.patch_embed
    patches = torch.rand(37, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = conv_embed(patches)
    got = LinearPatchEmbed(conv_embed.proj)(patches)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_the_cpu_model_step_runs_no_per_shape_onednn_kernels(tiny_model_path):
    """oneDNN keeps a kernel for every new tensor shape (every image size): the model step's RSS grew with
    traffic. On the CPU in float32 the patch embedding runs as a Linear and oneDNN is off; torch's own GELU
    is the closer of the two to the exact one (oneDNN approximates erf)."""
    from backend.runtime.backbone import load_backbone
    from backend.runtime.platforms import LinearPatchEmbed, Platform

    model = load_backbone(str(tiny_model_path), torch.float32, "sdpa", torch.device("cpu"))
    rows = torch.rand(300, 256, generator=torch.Generator().manual_seed(2)) * 8 - 4
    enabled = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = True
        with_onednn = torch.nn.functional.gelu(rows)
        Platform(torch.device("cpu")).prepare_model(model)
        assert isinstance(model.visual.patch_embed, LinearPatchEmbed)
        assert not torch.backends.mkldnn.enabled
        exact = 0.5 * rows.double() * (1 + torch.special.erf(rows.double() / 2**0.5))
        error = (torch.nn.functional.gelu(rows).double() - exact).abs().max()
        assert error <= (with_onednn.double() - exact).abs().max() and error < 1e-6
    finally:
        torch.backends.mkldnn.enabled = enabled


def test_mm_token_type_ids_mark_image_and_video_placeholders():
    from backend.runtime.backbone import mm_token_type_ids, wants_mm_token_type_ids

    ids = torch.tensor([[151644, 151655, 151655, 9707, 151656, 151643]])
    assert mm_token_type_ids(ids, 151655, 151656).tolist() == [[0, 1, 1, 0, 2, 0]]

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, pixel_values=None): ...

    class New(torch.nn.Module):
        def forward(self, input_ids=None, pixel_values=None, mm_token_type_ids=None): ...

    assert not wants_mm_token_type_ids(Old()) and wants_mm_token_type_ids(New())
