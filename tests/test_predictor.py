"""The Predictor: fidelity of the fast path, multi-structure calls, precision, memory budget."""
import json
import os
import subprocess
import sys

import pytest
import torch

from neuroverse_bids.model import Neuroverse3D, load_checkpoint, save_checkpoint
from neuroverse_bids.model.engine import memory
from neuroverse_bids.model.contexts import ContextPairs
from neuroverse_bids.model.predictor import CPU_AUTO_MAX, Predictor, resolve_precision


def _volumes(shape, pairs, structures=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=gen)
    images = torch.rand((pairs, *shape), generator=gen)
    lead = (pairs,) if structures is None else (structures, pairs)
    labels = (torch.rand((*lead, *shape), generator=gen) > 0.5).float()
    return target, images, labels


def _tiny(seed=0):
    torch.manual_seed(seed)
    return Neuroverse3D(channels=(4, 8, 8), convs_per_block=2)


@pytest.mark.parametrize("m", [1, "auto"])
def test_float32_fast_path_matches_the_released_reference(official_small_ckpt, official_io, m):
    """channels_last, fused CPU kernels, reordered up-merge: same output as the release."""
    predictor = Predictor(load_checkpoint(official_small_ckpt), device="cpu", precision="float32",
                          mini_context_size=m)
    out = predictor.predict(official_io["target_in"][0, 0], official_io["context_in"][0, :, 0],
                            official_io["context_out"][0, :, 0])
    assert out.dtype == torch.float32 and out.shape == (32, 32, 32)
    assert (out - official_io["output_l5"][0, 0]).abs().max().item() <= 1e-5
    assert predictor.last_mini_context_size == (CPU_AUTO_MAX if m == "auto" else m)


@pytest.mark.parametrize("m", [1, 3, 4, None])
def test_k_structures_in_one_call_equal_k_separate_calls(m):
    target, images, labels = _volumes((16, 16, 16), pairs=3, structures=4, seed=1)
    predictor = Predictor(_tiny(), device="cpu", precision="float32", mini_context_size=m)
    together = predictor.predict(target, images, labels)
    assert together.shape == (4, 16, 16, 16)
    for k in range(4):
        alone = predictor.predict(target, images, labels[k])
        assert (together[k] - alone).abs().max().item() <= 1e-5
    # the structures really differ, so the check above is not vacuous
    assert (together[0] - together[1]).abs().max().item() > 1e-4


class _CountingVolumes:
    """A lazy sequence (as a loader of files would be) that records which volumes were read."""

    def __init__(self, volumes):
        self.volumes, self.reads = volumes, []

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, index):
        self.reads.append(index)
        return self.volumes[index].numpy()


def test_contexts_read_pair_by_pair_give_the_stacked_result():
    target, images, labels = _volumes((16, 16, 16), pairs=3, structures=2, seed=4)
    predictor = Predictor(_tiny(), device="cpu", precision="float32", mini_context_size=1)
    stacked = predictor.predict(target, images, labels)
    lazy_images = _CountingVolumes(images)
    lazy_labels = [_CountingVolumes(labels[0]), list(labels[1])]  # K sequences of L volumes
    streamed = predictor.predict(target, lazy_images, lazy_labels)
    assert (streamed - stacked).abs().max().item() == 0
    assert lazy_images.reads == [0, 1, 2, 0, 1, 2]  # one pair per chunk, K=2 label sets
    single = predictor.predict(target, list(images), _CountingVolumes(labels[1]))
    assert (single - stacked[1]).abs().max().item() == 0


def test_bad_context_volumes_are_named():
    target, images, labels = _volumes((16, 16, 16), pairs=2, seed=5)
    predictor = Predictor(_tiny(), device="cpu", precision="float32", mini_context_size=1)
    with pytest.raises(ValueError, match=r"context image 1 is \[16, 16, 8\]"):
        predictor.predict(target, [images[0], images[1][:, :, :8]], labels)
    with pytest.raises(ValueError, match="one volume per context image"):
        predictor.predict(target, images, labels[:1])
    with pytest.raises(ValueError, match="resample the pairs"):
        predictor.predict(target, images[:, :8], labels[:, :8])
    with pytest.raises(ValueError, match="no context pairs"):
        predictor.predict(target, [], [])


@pytest.mark.parametrize("channels,grid", [((4, 8, 8), 16), (None, 16)])
def test_bfloat16_agrees_with_float32(channels, grid, needs_bf16):
    """Relative L2 error of the output <= 1e-2 (tiny fixture model and released config)."""
    target, images, labels = _volumes((grid,) * 3, pairs=2, seed=2)
    outputs = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = Neuroverse3D() if channels is None else Neuroverse3D(channels=channels)
        predictor = Predictor(model, device="cpu", precision=precision, mini_context_size=1)
        outputs[precision] = predictor.predict(target, images, labels)
        assert predictor.precision == precision
    ref, low = outputs["float32"], outputs["bfloat16"]
    error = ((low - ref).norm() / ref.norm()).item()
    assert 0 < error <= 1e-2, error


@pytest.mark.xfail(strict=True, reason=(
    "known: bfloat16 gives rel L2 0.0122 on this 4..64-channel fixture (released config: "
    "~2e-3). Rounding only the parameters to bfloat16 already gives 0.0085 (weights 0.0050, "
    "biases 0.0044, inputs 0.0017); float32 target decoder 0.0111, float32 output block 0.0119, "
    "float32 context U-Net 0.0108: no cheap float32 island reaches 1e-2"))
def test_bfloat16_agrees_with_float32_on_the_official_small_model(official_small_ckpt,
                                                                 official_io, needs_bf16):
    args = (official_io["target_in"][0, 0], official_io["context_in"][0, :, 0],
            official_io["context_out"][0, :, 0])
    outputs = {}
    for precision in ("float32", "bfloat16"):
        predictor = Predictor(load_checkpoint(official_small_ckpt), device="cpu",
                              precision=precision, mini_context_size=1)
        outputs[precision] = predictor.predict(*args)
    ref, low = outputs["float32"], outputs["bfloat16"]
    assert ((low - ref).norm() / ref.norm()).item() <= 1e-2


def test_auto_precision_keeps_bfloat16_only_where_it_agrees(official_small_ckpt, tiny_model):
    """The fixture model misses the 1e-2 bound in bfloat16: auto falls back to float32 for it
    (measured, not assumed) and keeps bfloat16 for a model that meets it."""
    from neuroverse_bids.model.predictor import AUTO_TOLERANCE, native_bfloat16

    cpu = torch.device("cpu")
    if not native_bfloat16(cpu):
        assert Predictor(tiny_model, device="cpu", precision="auto").precision == "float32"
        return
    official = Predictor(load_checkpoint(official_small_ckpt), device="cpu", precision="auto")
    assert official.reduced_precision_error > AUTO_TOLERANCE
    assert official.precision == "float32"
    assert all(p.dtype == torch.float32 for p in official.model.parameters())
    tiny = Predictor(tiny_model, device="cpu", precision="auto")
    assert 0 < tiny.reduced_precision_error <= AUTO_TOLERANCE
    assert tiny.precision == "bfloat16"


def test_precision_and_device_choices():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA only"):
        resolve_precision("float16", cpu)
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", cpu)
    from neuroverse_bids.model.capability import bfloat16_support

    native = bfloat16_support(cpu).faster
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    with pytest.raises(ValueError, match="mini_context_size"):
        Predictor(_tiny(), device="cpu", mini_context_size=0)


def test_auto_mini_context_size_is_the_largest_that_fits(monkeypatch):
    """Plan for a large grid (only traced at a tiny one): budget between the needs of m=3, 4."""
    from neuroverse_bids.model import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "CPU_AUTO_MAX", 6)  # the search, not the CPU cap
    predictor = Predictor(_tiny(), device="cpu", precision="float32")
    shape, pairs = (384, 384, 384), 8
    peaks = [predictor.peak_bytes(shape, pairs, 1, m) for m in range(1, pairs + 1)]
    assert all(a < b for a, b in zip(peaks, peaks[1:]))  # more pairs at once, more memory
    assert peaks[1] - peaks[0] > 2 ** 28  # the problem is big enough for RSS noise not to matter
    in_use = memory.in_use_bytes(predictor.device)
    margin = memory.safety(predictor.device)
    middle = in_use + memory.SLACK_BYTES + margin * (peaks[2] + peaks[3]) / 2
    predictor.memory_gb = middle / memory.GB
    assert predictor.plan(shape, pairs, 1, "auto") == 3
    assert predictor.last_required_bytes <= predictor.budget_bytes
    predictor.memory_gb = 10_000
    assert predictor.plan(shape, pairs, 1, "auto") == 6  # the CPU cap, not pairs
    monkeypatch.undo()
    assert predictor.plan(shape, pairs, 1, "auto") == CPU_AUTO_MAX
    assert predictor.plan(shape, pairs, 1, 5) == 5  # an explicit m that fits is honoured


def test_an_m_that_cannot_fit_fails_before_any_work(monkeypatch):
    target, images, labels = _volumes((16, 16, 16), pairs=4)
    predictor = Predictor(_tiny(), device="cpu", precision="float32", mini_context_size=4,
                          memory_gb=memory.in_use_bytes(torch.device("cpu")) / memory.GB)
    shapes = []
    original = Predictor._run
    monkeypatch.setattr(Predictor, "_run", lambda self, t, *a, **k: (
        shapes.append(tuple(t.shape)), original(self, t, *a, **k))[1])
    with pytest.raises(memory.MemoryBudgetError, match="mini-context size 4 needs about"):
        predictor.predict(target, images, labels)
    assert (16, 16, 16) not in shapes  # only the tiny-grid trace ran
    predictor.mini_context_size = "auto"
    with pytest.raises(memory.MemoryBudgetError, match="even one context pair"):
        predictor.predict(target, images, labels)


def test_traced_estimate_bounds_the_tensor_memory_of_a_real_run():
    from neuroverse_bids.model.capability import bfloat16_support

    target, images, labels = _volumes((32, 32, 32), pairs=3, structures=2)
    # bfloat16 (the smaller activations) where this CPU runs it, else float32
    precision = "bfloat16" if bfloat16_support("cpu").runs else "float32"
    predictor = Predictor(_tiny(), device="cpu", precision=precision, mini_context_size=2)
    estimate = predictor.peak_bytes((32, 32, 32), 3, 2, 2)
    with torch.inference_mode():
        real = memory.traced_peak_bytes(
            lambda: predictor._run(target, ContextPairs(images, labels, target.shape), 2))
    assert 0.5 * estimate <= real <= estimate


RSS_SCRIPT = """
import json, sys, torch
from neuroverse_bids.model import Neuroverse3D
from neuroverse_bids.model import predictor as predictor_module
from neuroverse_bids.model.predictor import Predictor
from neuroverse_bids.model.engine import memory
m = int(sys.argv[1])  # the m the budget allows: between the needs of m and m + 1
predictor_module.CPU_AUTO_MAX = 4  # the search, not the CPU cap
torch.manual_seed(0)
shape, pairs = (80, 80, 80), 4
target, images = torch.rand(shape), torch.rand((pairs, *shape))
labels = (torch.rand((pairs, *shape)) > 0.5).float()
predictor = Predictor(Neuroverse3D(channels=(8, 16, 32)), device="cpu", precision="float32",
                      mini_context_size="auto")
peaks = [predictor.peak_bytes(shape, pairs, 1, size) for size in (m, m + 1)]
rss = memory.process_rss_bytes()
margin = memory.safety(predictor.device)
need, need_next = (memory.required_bytes(peak, rss, margin) for peak in peaks)
predictor.memory_gb = (need + need_next) / 2 / memory.GB
predictor.predict(target, images, labels)
peak = memory.peak_rss_bytes()
print(json.dumps({"peak": peak, "budget": predictor.budget_bytes,
                  "m": predictor.last_mini_context_size}))
"""


@pytest.mark.parametrize("m", [1, 2])
def test_measured_peak_rss_stays_under_the_budget(tmp_path, m):
    """In a fresh process: auto m under a budget that allows m of 4 pairs at once."""
    # cwd outside the checkout: the source folders must not shadow the installed package
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(m)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["m"] == m
    assert result["peak"] <= result["budget"], result


def test_autocast_bfloat16_forward_of_a_float32_model_uses_plain_ops(needs_bf16):
    """Under ``torch.autocast`` (training validation) activations are bfloat16 while weights
    stay float32: the engine's fused oneDNN kernels must not apply then (they need equal
    dtypes), and the reference forward runs with or without gradients alike."""
    from neuroverse_bids.model.engine.kernels import fusable

    model = _tiny(seed=3).to(memory_format=torch.channels_last_3d).eval()
    target, images, labels = _volumes((16, 16, 16), pairs=2, seed=3)
    args = (target[None, None], images[None, :, None], labels[None, :, None])
    assert not fusable(torch.zeros(1, 4, 2, 2, 2, dtype=torch.bfloat16), model.context_unet
                       .blocks[0].convs[0].weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            fused = model(*args)
        with torch.enable_grad():  # gradient mode: the plain (non-fused) path throughout
            plain = model(*args).detach()
    assert fused.dtype == plain.dtype and fused.shape == (1, 1, 16, 16, 16)
    error = ((fused.float() - plain.float()).norm() / plain.float().norm()).item()
    assert error <= 1e-2, error


def _run_script(script: str, tmp_path, **env) -> list:
    """Run ``script`` in a fresh process (its heap has no history) -> its last JSON line."""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=dict(os.environ, **env))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


FRAGMENTATION_SCRIPT = """
import json, torch
from neuroverse_bids.model.engine import memory

def rss_returned_after_freeing():
    big, small = [], []
    for _ in range(32):
        big.append(torch.ones(2 ** 20))  # 4 MB, touched
        small.append(torch.ones(2 ** 14))  # 64 kB, kept: pins the heap above each block
    holding = memory.process_rss_bytes()
    del big
    return holding - memory.process_rss_bytes()

with memory.fresh_heap():
    inside = rss_returned_after_freeing()
outside = rss_returned_after_freeing()  # threshold 32 MB after a fresh block: the heap
print(json.dumps([inside, outside]))
"""


@pytest.mark.skipif(memory._glibc() is None, reason="glibc only")
def test_fresh_heap_returns_freed_activations_despite_fragmentation(tmp_path):
    """In a fresh process: 32 blocks of 4 MB, each followed by a small long-lived one (as
    tensors' metadata and oneDNN's caches are): glibc's heap keeps the freed 128 MB, a
    :func:`fresh_heap` block returns it."""
    inside, outside = _run_script(FRAGMENTATION_SCRIPT, tmp_path)
    assert inside > 120 * 2 ** 20 and outside < 32 * 2 ** 20, (inside, outside)


def test_accumulating_bfloat16_features_into_float32_sums_is_exact(monkeypatch):
    from neuroverse_bids.model import apsp

    monkeypatch.setattr(apsp, "SLAB_BYTES", 8 * 240)  # slabs of 8 planes, the last of 5

    gen = torch.Generator().manual_seed(0)
    total = torch.randn(1, 3, 37, 5, 4, generator=gen).contiguous(memory_format=torch.channels_last_3d)
    part = torch.randn(1, 3, 37, 5, 4, generator=gen).to(torch.bfloat16)
    part = part.contiguous(memory_format=torch.channels_last_3d)
    expected = total + part.float()
    assert torch.equal(apsp.add_(total, part), expected)


def test_auto_precision_honours_the_agreement_recorded_in_the_checkpoint(tmp_path, monkeypatch,
                                                                       needs_bf16):
    """A checkpoint whose recorded bfloat16 masks or images miss the targets runs in float32
    under auto, without measuring; a passing record leaves the decision to the measurement."""
    from neuroverse_bids.model.checkpoint import record_precision_agreement, save_checkpoint
    from neuroverse_bids.model.engine import precision

    monkeypatch.setattr(precision, "native_bfloat16", lambda device: True)
    monkeypatch.setattr(precision, "reduced_precision_error", lambda *a, **k: 1e-3)
    path = save_checkpoint(_tiny(), tmp_path / "model.safetensors")
    failing = {"dice_min": 0.8, "psnr_min_db": 54.5, "measured_on": "held-out, L=8"}
    record_precision_agreement(path, "bfloat16", failing)
    model = load_checkpoint(path)
    assert model.metadata["precision_agreement"]["bfloat16"] == failing
    assert torch.equal(model.state_dict()["context_unet.embed.weight"],
                       _tiny().state_dict()["context_unet.embed.weight"])
    auto = Predictor(model, device="cpu", precision="auto")
    assert auto.precision == "float32"
    assert "dice_min 0.8 < 0.99" in auto.precision_reason
    assert Predictor(load_checkpoint(path), device="cpu", precision="bfloat16").precision == "bfloat16"
    record_precision_agreement(path, "bfloat16", dict(failing, dice_min=0.995))
    assert Predictor(load_checkpoint(path), device="cpu", precision="auto").precision == "bfloat16"


def test_bfloat16_output_is_the_same_for_any_mini_context_size(needs_bf16):
    """Chunks of any size, equal or not, give bit-identical bfloat16 output (the float32
    sums add the pairs in the same order)."""
    torch.manual_seed(0)
    model = Neuroverse3D(channels=(8, 16, 16), convs_per_block=2)
    target, images, labels = _volumes((16, 16, 16), pairs=5)
    outputs = [Predictor(model, device="cpu", precision="bfloat16", mini_context_size=m)
               .predict(target, images, labels) for m in (None, 1, 2)]
    assert outputs[0].abs().max() > 0
    for other in outputs[1:]:
        assert torch.equal(other, outputs[0])


def test_the_bfloat16_self_check_is_cached_per_checkpoint(tmp_path, monkeypatch, needs_bf16):
    """auto precision reads the self-check's error from the cache folder (keyed by the
    checkpoint's SHA256, dtype, device type, torch version); a corrupt entry is measured again
    and rewritten."""
    from neuroverse_bids.model.engine import precision

    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: True)
    path = save_checkpoint(_tiny(), tmp_path / "model.safetensors")
    first = Predictor(load_checkpoint(path), device="cpu", precision="auto")
    entries = list((tmp_path / "cache").rglob("*.json"))
    assert len(entries) == 1 and first.reduced_precision_error > 0
    record = json.loads(entries[0].read_text())
    assert record["sha256"] == first.metadata["sha256"] and record["torch"] == torch.__version__
    assert record["relative_l2"] == first.reduced_precision_error
    entries[0].write_text(json.dumps(dict(record, relative_l2=0.5)))  # read, not measured
    cached = Predictor(load_checkpoint(path), device="cpu", precision="auto")
    assert cached.precision == "float32" and "0.5" in cached.precision_reason
    entries[0].write_text("{not json")
    again = Predictor(load_checkpoint(path), device="cpu", precision="auto")
    assert again.reduced_precision_error == first.reduced_precision_error
    assert json.loads(entries[0].read_text())["relative_l2"] == first.reduced_precision_error
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".")]


def test_the_engine_computes_the_reference_network(official_small_ckpt, official_io):
    """The engine (fused kernels, channels-last, split and folded weights) against the
    reference network's plain forward on the same weights."""
    model = load_checkpoint(official_small_ckpt)
    args = (official_io["target_in"], official_io["context_in"], official_io["context_out"])
    with torch.inference_mode():
        reference = model(*args, mini_context_size=2)[0, 0]
    engine = Predictor(model, device="cpu", precision="float32", mini_context_size=2)
    out = engine.predict(args[0][0, 0], args[1][0, :, 0], args[2][0, :, 0])
    assert (out - reference).abs().max().item() <= 1e-5
