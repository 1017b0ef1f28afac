"""The bfloat16 capability probe and what each kind of CPU gets: ``auto`` falls back to
float32 where bfloat16 is not native, an explicit request where it cannot run exits 64 in one
line, in inference and training; ``NEUROVERSE3D_BF16=off`` gives any machine the AVX2 path."""
import subprocess

import nibabel as nb
import numpy as np
import pytest
import torch

from neuroverse_bids.model import Neuroverse3D, save_checkpoint
from neuroverse_bids.model import capability
from neuroverse_bids.model.capability import bfloat16_support
from neuroverse_bids.model.engine.precision import (PrecisionUnavailableError, resolve_precision,
                                                     training_bfloat16)
from neuroverse_bids.model.predictor import Predictor


@pytest.fixture
def bf16_off(monkeypatch):
    monkeypatch.setenv(capability.SWITCH_ENV, "off")


def test_the_probe_names_a_level_and_the_cpu_features():
    support = bfloat16_support("cpu")
    assert support.level in (capability.NATIVE, capability.EMULATED, capability.UNSUPPORTED)
    assert support.device == "cpu" and support.reason
    flags = capability.cpu_features()
    assert set(support.features) <= flags
    if capability._is_arm():
        assert "bf16" in flags or support.level != capability.NATIVE
    else:  # x86: native exactly where a bf16 arithmetic feature is present and torch runs it
        has_native = bool({"avx512_bf16", "amx_bf16"} & flags)
        assert (support.level == capability.NATIVE) == (has_native and support.runs)
        if "avx2" in flags:
            assert "avx2" in support.features
    assert bfloat16_support(torch.device("cpu")) is support  # cached per process


def test_the_switch_makes_bfloat16_unsupported(bf16_off):
    support = bfloat16_support("cpu")
    assert support.level == capability.UNSUPPORTED and not support.runs and not support.faster
    assert "NEUROVERSE3D_BF16=off" in support.reason
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(PrecisionUnavailableError, match="NEUROVERSE3D_BF16=off") as error:
        resolve_precision("bfloat16", torch.device("cpu"))
    assert error.value.exit_code == 64


def test_an_unsupported_cpu_is_explained_by_its_missing_features(monkeypatch):
    """What a CPU with AVX2 only reports, simulated: oneDNN's gate says no."""
    monkeypatch.setattr(capability, "_cpu_features", lambda: frozenset({"avx", "avx2", "fma"}))
    monkeypatch.setattr(capability, "_is_arm", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    support = capability._probe_cpu(off=False)
    assert support.level == capability.UNSUPPORTED and support.features == ("avx2",)
    assert "avx512bw + avx512vl + avx512dq" in support.reason


def test_a_cpu_without_bf16_arithmetic_is_emulated(monkeypatch):
    """AVX-512 BW/VL/DQ without avx512_bf16 (e.g. Skylake-X): runs, slower; auto avoids it."""
    flags = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"})
    monkeypatch.setattr(capability, "_cpu_features", lambda: flags)
    monkeypatch.setattr(capability, "_is_arm", lambda: False)
    monkeypatch.setattr(capability, "_bfloat16_convolution_runs", lambda device: (True, ""))
    support = capability._probe_cpu(off=False)
    assert support.level == capability.EMULATED and support.runs and not support.faster
    assert "avx512_bf16" in support.reason


def test_arm_features_are_read_not_assumed(monkeypatch):
    monkeypatch.setattr(capability, "_is_arm", lambda: True)
    monkeypatch.setattr(capability, "_bfloat16_convolution_runs", lambda device: (True, ""))
    monkeypatch.setattr(capability, "_cpu_features", lambda: frozenset({"asimd", "sve", "bf16"}))
    assert capability._probe_cpu(off=False).level == capability.NATIVE  # Graviton 3, M2+
    monkeypatch.setattr(capability, "_cpu_features", lambda: frozenset({"asimd"}))
    assert capability._probe_cpu(off=False).level == capability.EMULATED  # Graviton 2, M1


def test_predictor_provenance_says_which_precision_ran_and_why(bf16_off):
    model = Neuroverse3D(channels=(4, 8, 8))
    auto = Predictor(model, device="cpu", precision="auto")
    assert auto.precision == "float32"
    assert auto.precision_reason.startswith("auto: float32, as bfloat16 unsupported")
    assert Predictor(model, device="cpu", precision="float32").precision_reason == "requested"
    with pytest.raises(PrecisionUnavailableError):
        Predictor(model, device="cpu", precision="bfloat16")


def test_training_precision_auto_and_required(bf16_off):
    cpu = torch.device("cpu")
    assert training_bfloat16("auto", cpu) == (False, training_bfloat16("auto", cpu)[1])
    assert "unsupported" in training_bfloat16("auto", cpu)[1]
    assert training_bfloat16(False, cpu)[0] is False
    with pytest.raises(PrecisionUnavailableError):
        training_bfloat16(True, cpu)


def _volume(path, shape=(16, 16, 16), seed=0, labels=False):
    data = np.random.default_rng(seed).random(shape).astype(np.float32)
    nb.save(nb.Nifti1Image((data > 0.5).astype(np.uint8) if labels else data, np.eye(4)), path)
    return str(path)


def test_explicit_bfloat16_exits_64_in_one_line_in_predict(tmp_path):
    """The AVX2-only path (switch off): ``neuroverse3d-predict --precision bfloat16`` says what
    is missing in one line, no traceback; ``auto`` runs in float32."""
    torch.manual_seed(0)
    model = save_checkpoint(Neuroverse3D(channels=(4, 8, 8)), tmp_path / "m.safetensors")
    command = ["neuroverse3d-predict", "--model", str(model), "--target",
               _volume(tmp_path / "t.nii.gz"), "--context-images",
               _volume(tmp_path / "i.nii.gz", seed=1), "--context-labels",
               _volume(tmp_path / "l.nii.gz", seed=2, labels=True), "--output",
               str(tmp_path / "out.nii.gz"), "--device", "cpu"]
    env = {**__import__("os").environ, capability.SWITCH_ENV: "off"}
    refused = subprocess.run(command + ["--precision", "bfloat16"], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=300)
    assert refused.returncode == 64, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "bfloat16 cannot run" in lines[0] and "NEUROVERSE3D_BF16=off" in lines[0]
    assert not (tmp_path / "out.nii.gz").exists()
    ran = subprocess.run(command + ["--precision", "auto"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert (tmp_path / "out.nii.gz").is_file()


def test_explicit_bf16_training_exits_64(tmp_path, bf16_off, capsys):
    from synthetic import make_toy_dataset

    from neuroverse_bids.model.training.cli import main as train_main

    manifest = make_toy_dataset(tmp_path / "data", subjects=3, shape=(8, 8, 8), seed=1)
    code = train_main(["--manifest", str(manifest), "--output-dir", str(tmp_path / "run"),
                       "--channels", "4", "8", "--grid", "8", "8", "8", "--steps", "1",
                       "--bf16", "--no-progress"])
    assert code == 64
    assert "bfloat16 cannot run" in capsys.readouterr().err


def test_explicit_bfloat16_exits_64_in_the_participant_run(demo_dataset, tmp_path, bf16_off,
                                                           monkeypatch, capsys):
    """Refused before any work: one line naming what is missing, nothing in the output."""
    from neuroverse_bids.cli.run import main

    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(demo_dataset / "templateflow"))
    monkeypatch.chdir(tmp_path)
    code = main([str(demo_dataset / "bids"), str(tmp_path / "out"), "participant",
                 "--context-spec", str(demo_dataset / "context-spec.json"), "-w",
                 str(tmp_path / "work"), "--sloppy", "--nprocs", "1", "--device", "cpu",
                 "--precision", "bfloat16"])
    assert code == 64
    err = capsys.readouterr().err
    assert "bfloat16 cannot run" in err and "Traceback" not in err, err
    assert not list((tmp_path / "out").rglob("*.nii.gz"))
