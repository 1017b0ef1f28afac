"""Fidelity of the network to the released model, and exactness of APSP inference."""
import itertools

import pytest
import torch

from neuroverse_bids.model import Neuroverse3D, load_checkpoint
from neuroverse_bids.model.apsp import chunk_bounds, mean_context_features
from neuroverse_bids.model.checkpoint import to_released_names


def test_released_config_has_the_released_parameter_count():
    assert sum(p.numel() for p in Neuroverse3D().parameters()) == 70_854_913


def test_released_config_matches_the_manifest_keys_and_shapes(data_dir):
    rows = (data_dir / "official_full_manifest.tsv").read_text().splitlines()[1:]
    manifest = {}
    for row in rows:
        key, shape = row.split("\t")
        manifest[key] = tuple(int(s) for s in shape.split("x"))
    with torch.device("meta"):
        model = Neuroverse3D()
    released = to_released_names(model.state_dict(), model.config)  # the checkpoint's table
    ours = {f"net.{k}": tuple(v.shape) for k, v in released.items()}
    assert len(manifest) == 132
    assert ours == manifest


@pytest.mark.parametrize("mini_context_size,key", [(1, "output_l1"), (2, "output_l2"), (5, "output_l5")])
def test_official_small_outputs_match_the_reference(official_small_ckpt, official_io, mini_context_size, key):
    model = load_checkpoint(official_small_ckpt)
    with torch.inference_mode():
        out = model(official_io["target_in"], official_io["context_in"], official_io["context_out"],
                    mini_context_size=mini_context_size)
    diff = (out - official_io[key]).abs().max().item()
    assert out.shape == (1, 1, 32, 32, 32)
    assert diff <= 1e-5, diff


def test_any_mini_context_size_and_chunk_order_give_the_same_output(official_small_ckpt, official_io):
    model = load_checkpoint(official_small_ckpt)
    target, ctx_in, ctx_out = (official_io[k] for k in ("target_in", "context_in", "context_out"))
    with torch.inference_mode():
        reference = model(target, ctx_in, ctx_out, mini_context_size=5)
        bottleneck, skips = model.encode_target(target)
        for m in range(1, 6):
            chunks = len(chunk_bounds(5, m))
            for order in itertools.islice(itertools.permutations(range(chunks)), 6):
                means = mean_context_features(model, ctx_in, ctx_out, skips, m, order=order)
                out = model.decode(bottleneck, skips, means)
                assert (out - reference).abs().max().item() <= 1e-5, (m, order)


def test_output_depends_on_the_context():
    torch.manual_seed(1)
    model = Neuroverse3D(channels=(4, 8, 8)).eval()
    target = torch.rand(1, 1, 8, 8, 8)
    ctx_in = torch.rand(1, 3, 1, 8, 8, 8)
    labels = (torch.rand(1, 3, 1, 8, 8, 8) > 0.5).float()
    with torch.inference_mode():
        a = model(target, ctx_in, labels)
        b = model(target, ctx_in, 1 - labels)
    assert (a - b).abs().max() > 1e-4


def test_context_may_stay_on_another_device_than_the_network():
    """Chunks are moved to the network's device and dtype one at a time."""
    torch.manual_seed(2)
    model = Neuroverse3D(channels=(4, 8, 8)).double().eval()
    target = torch.rand(1, 1, 8, 8, 8, dtype=torch.float64)
    ctx_in, ctx_out = torch.rand(1, 4, 1, 8, 8, 8), torch.rand(1, 4, 1, 8, 8, 8)  # float32
    with torch.inference_mode():
        out = model(target, ctx_in, ctx_out, mini_context_size=3)
        ref = model(target, ctx_in.double(), ctx_out.double())
    assert out.dtype == torch.float64
    assert torch.allclose(out, ref, atol=1e-10)


@pytest.mark.parametrize("shape,message", [
    ((1, 1, 10, 8, 8), "not divisible by 4"),
    ((1, 8, 8, 8), "target_in must be"),
])
def test_bad_shapes_are_refused_clearly(shape, message):
    model = Neuroverse3D(channels=(4, 8, 8))
    target = torch.rand(*shape)
    spatial = shape[-3:]
    ctx = torch.rand(1, 2, 1, *spatial)
    with pytest.raises(ValueError, match=message):
        model(target, ctx, ctx)


def test_mini_context_size_out_of_range_is_refused():
    model = Neuroverse3D(channels=(4, 8, 8))
    ctx = torch.rand(1, 2, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="mini_context_size must be in 1..2"):
        model(torch.rand(1, 1, 8, 8, 8), ctx, ctx, mini_context_size=3)


CL = torch.channels_last_3d


def test_separable_bfloat16_upsampling_equals_trilinear_up_to_rounding():
    from neuroverse_bids.model.engine.kernels import upsample

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, 6, generator=gen)
    exact = torch.nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    with torch.inference_mode():
        fast = upsample(x.to(torch.bfloat16).contiguous(memory_format=CL))
        assert torch.equal(upsample(x), exact)  # float32: torch's kernel
    assert fast.shape == exact.shape and fast.is_contiguous(memory_format=CL)
    # three 1D passes: up to three bfloat16 roundings (2^-8 each) plus the input's
    bound = 4 * 2 ** -8 * exact.abs().amax() + 1e-6
    assert (fast.float() - exact).abs().max() <= bound
    assert (fast.float() - exact).norm() / exact.norm() < 4e-3


@pytest.mark.parametrize("convs", [1, 2])
def test_a_residual_block_consuming_its_input_gives_the_same_output(convs):
    """The engine's residual block, fused and writing into its input, against the reference."""
    from neuroverse_bids.model.engine import Engine
    from neuroverse_bids.model.network import ResidualBlock

    torch.manual_seed(0)
    block = ResidualBlock(4, convs).eval().to(memory_format=CL)
    x = torch.randn(1, 4, 6, 6, 6).contiguous(memory_format=CL)
    with torch.inference_mode():
        expected = Engine.residual(block, x)[0]
        consumed = x.clone()
        out, scratch = Engine.residual(block, consumed, consume=True)
    assert torch.equal(out, expected)
    with torch.no_grad():
        assert torch.allclose(expected, block(x), atol=1e-6)
    if convs == 1:  # a single conv reads its input while the sum is written: not consumed
        assert scratch is None and out.data_ptr() != consumed.data_ptr()
    else:
        assert out.data_ptr() == consumed.data_ptr()
        assert scratch.shape == x.shape and scratch.is_contiguous(memory_format=CL)
