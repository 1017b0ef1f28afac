"""The APSP training step gives an unbiased estimate of the full-context gradient."""
import pytest
import torch

from neuroverse_bids.model.apsp import apsp_training_forward, chunk_bounds


def _gradients(model, loss):
    """All parameter gradients, context U-Net first."""
    model.zero_grad()
    loss.backward()
    params = list(model.context_unet.parameters()) + list(model.target_encoder.parameters()) + \
        list(model.target_decoder.parameters())
    return torch.cat([p.grad.flatten() for p in params])


def _context_size(model):
    return sum(p.numel() for p in model.context_unet.parameters())


@pytest.mark.parametrize("num_pairs,mini_context_size", [(5, 2), (4, 2), (3, 1), (3, 3)])
def test_average_over_chunk_choices_equals_full_context_gradient(tiny_model, num_pairs, mini_context_size):
    torch.manual_seed(3)
    target = torch.rand(1, 1, 8, 8, 8, dtype=torch.float64)
    ctx_in = torch.rand(1, num_pairs, 1, 8, 8, 8, dtype=torch.float64)
    ctx_out = (torch.rand(1, num_pairs, 1, 8, 8, 8) > 0.5).double()
    truth = torch.rand(1, 1, 8, 8, 8, dtype=torch.float64)

    full_out = tiny_model(target, ctx_in, ctx_out)
    full_grad = _gradients(tiny_model, ((full_out - truth) ** 2).mean())

    chunks = len(chunk_bounds(num_pairs, mini_context_size))
    estimates = []
    for chosen in range(chunks):
        out = apsp_training_forward(tiny_model, target, ctx_in, ctx_out, mini_context_size,
                                    chosen_chunk=chosen)
        assert torch.allclose(out, full_out, atol=1e-12)  # the value is the full forward
        estimates.append(_gradients(tiny_model, ((out - truth) ** 2).mean()))
    average = torch.stack(estimates).mean(0)
    relative = (average - full_grad).norm() / full_grad.norm()
    assert relative <= 1e-4, relative.item()
    if chunks > 1:  # a single estimate differs in the context branch: the test is not trivial
        context = slice(0, _context_size(tiny_model))
        single = estimates[0][context] - full_grad[context]
        assert single.norm() / full_grad[context].norm() > 1e-3


def test_chunk_is_drawn_from_the_generator(tiny_model):
    torch.manual_seed(4)
    args = (torch.rand(1, 1, 8, 8, 8, dtype=torch.float64), torch.rand(1, 4, 1, 8, 8, 8, dtype=torch.float64),
            torch.rand(1, 4, 1, 8, 8, 8, dtype=torch.float64))
    a = apsp_training_forward(tiny_model, *args, 1, generator=torch.Generator().manual_seed(7))
    b = apsp_training_forward(tiny_model, *args, 1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="chosen_chunk"):
        apsp_training_forward(tiny_model, *args, 2, chosen_chunk=2)
