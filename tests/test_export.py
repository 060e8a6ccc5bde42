"""Deployment paths: TorchScript, torch.fx, torch.export, ONNX, MONAI bundles, and the ``rep3d export`` command."""

from __future__ import annotations

import os

import pytest
import torch

import rep3d
from rep3d.layers import RepLKConv3d

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(kernel_size: int = 5, deploy: bool = False, name: str = "rep3d_tiny") -> torch.nn.Module:
    torch.manual_seed(0)
    model = rep3d.create_model(name, num_classes=3, kernel_size=kernel_size).eval()
    return rep3d.reparameterize_model(model) if deploy else model


@pytest.mark.parametrize("deploy", [False, True], ids=["train_form", "deployed"])
@pytest.mark.parametrize("how", ["script", "trace", "fx"])
def test_model_scripts_traces_and_fx_traces_to_eager_outputs(how, deploy):
    model = tiny(name="rep3d_tiny_csla", deploy=deploy)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ref = model(x)
        if how == "script":
            graph = torch.jit.script(model)
        elif how == "trace":
            graph = torch.jit.trace(model, x)
        else:
            graph = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(graph(x), ref, atol=1e-5, rtol=1e-5)
    if how == "fx":  # the engine stays one call that picks its path when the graph runs
        assert any(getattr(n.target, "__name__", "") == "engine_conv3d" for n in graph.graph.nodes)


def test_scripted_layer_trains_like_eager():
    torch.manual_seed(0)
    conv = RepLKConv3d(4, 5, small_kernel=3)
    scripted = torch.jit.script(conv)
    x = torch.randn(2, 4, 6, 6, 6)
    y = scripted(x)
    torch.testing.assert_close(y, conv(x), atol=1e-5, rtol=1e-5)
    y.sum().backward()
    assert conv.modulation.generator.conv1.weight.grad is not None  # parameters are shared with the script


def test_eager_errors_are_kept_outside_tracing():
    conv = RepLKConv3d(4, 5)
    with pytest.raises(ValueError, match="built for 4 channels"):
        conv(torch.randn(1, 3, 6, 6, 6))
    with pytest.raises(ValueError, match="divisible by 16"):
        tiny()(torch.randn(1, 1, 20, 32, 32))


def test_export_with_dynamic_batch_and_spatial_sizes_uses_the_direct_engine():
    from torch.export import Dim

    model = tiny(kernel_size=21, deploy=True)
    x = torch.randn(2, 1, 32, 32, 32)
    d, h, w = (Dim(name, min=2, max=8) for name in "dhw")  # >= 32 voxels: stage 4 keeps >= 2 per axis
    shapes = {"x": {0: Dim("batch", min=1, max=16), 2: 16 * d, 3: 16 * h, 4: 16 * w}}
    program = torch.export.export(model, (x,), dynamic_shapes=shapes)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("fft" in t for t in targets)
    with torch.no_grad():
        for shape in [(2, 1, 32, 32, 32), (1, 1, 48, 32, 64)]:
            x = torch.randn(shape)
            torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-4)


def test_fft_engine_refuses_a_dynamic_spatial_export_and_names_the_workaround():
    from torch.export import Dim

    conv = RepLKConv3d(4, 5, conv_backend="fft", deploy=True)
    x = torch.randn(2, 4, 8, 8, 8)
    with pytest.raises(Exception, match="conv_backend='auto' or 'direct'"):
        torch.export.export(conv, (x,), dynamic_shapes={"x": {2: Dim("d", min=4, max=64)}})


# --- the exporters (each reloads its file in its own runtime and compares with eager before returning) ------------


def _export(model, fmt, path, **kwargs):
    from rep3d.export import export_model

    report = export_model(model, fmt, path, **kwargs)
    assert report.path == path and path.exists()
    assert report.relative_error <= 1e-4
    return report


def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch(tmp_path):
    import onnx
    import onnxruntime as ort

    model = tiny()
    report = _export(model, "onnx", tmp_path / "tiny.onnx", roi=(32, 32, 32), dynamic="batch")
    assert report.folded and report.dynamic == ("batch",)
    assert "direct on 4 of 4" in report.conv_path
    graph = onnx.load(tmp_path / "tiny.onnx")
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 32, 32, 32)
    with torch.no_grad():
        ref = model(x)
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_onnx_export_at_kernel_21_holds_the_fft_engine_as_matmul_not_dft(tmp_path):
    import onnx

    # onnxruntime's DFT kernel was 12-20x slower than the same transforms as MatMul (benchmarks/README.md)
    report = _export(tiny(kernel_size=21, deploy=True), "onnx", tmp_path / "k21.onnx", roi=(32, 32, 32))
    assert not report.folded
    assert "fft on 1 of 4 (16x16x16 maps)" in report.conv_path
    ops = {node.op_type for node in onnx.load(tmp_path / "k21.onnx").graph.node}
    assert "DFT" not in ops and "MatMul" in ops and "Conv" in ops


def test_conv_plan_names_each_engine_as_a_typed_value():
    from rep3d.export import Engine, conv_plan, example_input, prepare_model

    model, _ = prepare_model(tiny(kernel_size=21), backend=None)
    plan = conv_plan(model, example_input(model, (32, 32, 32)))
    assert plan.engines == {Engine.DIRECT, Engine.FFT} and plan.maps[Engine.FFT] == ("16x16x16",)
    assert conv_plan(model, example_input(model, (32, 32, 32)), dynamic=("batch",)).engines == {Engine.DIRECT}


def test_power_of_two_fft_lengths_are_an_engine_setting_and_leave_the_length_function_alone():
    from rep3d.export import power_of_two_fft_lengths
    from rep3d.layers import engine_settings, fft_conv, fft_lengths

    assert fft_lengths((16, 16, 16), (21, 21, 21)) == (30, 30, 30)
    before = fft_conv.fast_fft_length
    with power_of_two_fft_lengths():
        assert fft_conv.fast_fft_length is before  # no global function swapped in
        assert fft_lengths((16, 16, 16), (21, 21, 21)) == (32, 32, 32)
    with engine_settings(fft_lengths="power-of-two"):
        assert fft_lengths((7, 9, 30), (13, 13, 13)) == (16, 16, 64)
    assert fft_lengths((7, 9, 30), (13, 13, 13)) == (16, 16, 36)


def test_torchscript_export_takes_any_batch_and_volume_size(tmp_path):
    model = tiny()
    report = _export(model, "torchscript", tmp_path / "tiny.ts", roi=(32, 32, 32))
    assert report.dynamic == ("batch", "spatial") and report.input_shape == (2, 1, 48, 32, 32)
    loaded = torch.jit.load(str(tmp_path / "tiny.ts"))
    x = torch.randn(1, 1, 32, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)


def test_exported_program_export_with_a_dynamic_batch(tmp_path):
    model = tiny()
    report = _export(model, "exported-program", tmp_path / "tiny.pt2", roi=(32, 32, 32), dynamic=["batch"])
    assert report.input_shape == (2, 1, 32, 32, 32)
    program = torch.export.load(str(tmp_path / "tiny.pt2"))
    x = torch.randn(3, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)


def test_export_refuses_to_replace_a_file_and_rejects_bad_options(tmp_path):
    from rep3d.errors import Rep3DValueError
    from rep3d.export import export_model

    target = tmp_path / "keep.onnx"
    target.write_text("user data")
    with pytest.raises(Rep3DValueError, match="exists; pass --overwrite"):
        export_model(tiny(), "onnx", target)
    assert target.read_text() == "user data"
    with pytest.raises(Rep3DValueError, match="dynamic axes must be among"):
        export_model(tiny(), "onnx", tmp_path / "x.onnx", dynamic="depth")
    with pytest.raises(Rep3DValueError, match="multiples of the network stride 16"):
        export_model(tiny(), "onnx", tmp_path / "x.onnx", roi=(20, 32, 32))
    with pytest.raises(Rep3DValueError, match="opset must be >= 17"):
        export_model(tiny(), "onnx", tmp_path / "x.onnx", roi=(32, 32, 32), opset=13)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx"]  # nothing half-written left behind


_LOAD_WITHOUT_REP3D = """
import sys
try:
    import rep3d
except ImportError:
    pass
else:
    sys.exit("rep3d is importable here: the test would prove nothing")
import torch
x = torch.load(sys.argv[3])
ts = torch.jit.load(sys.argv[1])(x)
ep = torch.export.load(sys.argv[2]).module()(x)
torch.save({"ts": ts, "ep": ep}, sys.argv[4])
"""


def test_torchscript_and_exported_program_run_without_rep3d_installed(tmp_path):
    import site
    import subprocess
    import sys

    model = tiny(kernel_size=7)
    _export(model, "torchscript", tmp_path / "m.ts", roi=(32, 32, 32))
    _export(model, "exported-program", tmp_path / "m.pt2", roi=(32, 32, 32))
    x = torch.randn(1, 1, 32, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_REP3D)
    # -S: no site processing, so neither rep3d's editable-install hook nor the user's PYTHONPATH additions apply;
    # only the interpreter's site-packages (torch and its dependencies) are on the path
    env = {"PYTHONPATH": os.pathsep.join(site.getsitepackages()), "OMP_NUM_THREADS": "1", "PATH": os.environ["PATH"]}
    subprocess.run(
        [sys.executable, "-S", str(script), str(tmp_path / "m.ts"), str(tmp_path / "m.pt2"), str(tmp_path / "x.pt"),
         str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path, env=env, timeout=300,
    )
    out = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(out["ts"], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["ep"], ref, atol=1e-5, rtol=1e-5)


# --- MONAI bundle ------------------------------------------------------------------------------------------------


def test_monai_bundle_run_by_monai_equals_rep3d_predict(tmp_path, capsys):
    """The bundle segments as ``rep3d predict`` does, voxel for voxel: the phantom, and a scan whose lung lies below
    the window's floor at the body's edge (the bundle crops to the same body box, so the lung is not cut away)."""
    import json

    import nibabel as nib
    import numpy as np
    from monai.bundle import run as run_bundle

    from rep3d.cli import main
    from rep3d.data.phantom import make_phantom

    torch.manual_seed(0)
    cfg = dict(roi_size=(32, 32, 32), spacing=(3.0, 3.0, 3.5), intensity_window=(-125.0, 275.0), orientation="RAS",
               class_names=["background", "body", "organ"])
    model = rep3d.create_model("rep3d_tiny", num_classes=3, kernel_size=5, pretrained_cfg_overlay=cfg)
    rep3d.save_pretrained(model, tmp_path / "run")  # training form
    phantom = make_phantom(0, shape=(40, 36, 30), spacing=(2.0, 2.0, 2.5))
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(phantom.image, phantom.affine), tmp_path / "in" / "case.nii.gz")
    # a lung at -850 HU (below the window, above the body floor) sticking out of the soft tissue along the first axis:
    # a crop to the voxels above the window's floor would cut it away and call it background
    lung = np.full((48, 36, 30), -1000.0, dtype=np.float32)
    lung[4:26, 6:30, 5:25] = -850.0
    lung[26:44, 6:30, 5:25] = 40.0
    lung[30:40, 12:24, 10:20] = 160.0
    nib.save(nib.Nifti1Image(lung, phantom.affine), tmp_path / "in" / "lung.nii.gz")

    bundle = tmp_path / "bundle"
    assert main(["export", f"local-dir:{tmp_path / 'run'}", "--format", "monai-bundle", "-o", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "training form: folded it" in out and "verified: max |exported - eager|" in out
    for part in ("configs/metadata.json", "configs/inference.json", "models/model.ts", "docs/README.md"):
        assert (bundle / part).is_file(), part
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "body",
                                                                             "2": "organ"}
    inference = json.loads((bundle / "configs/inference.json").read_text())
    assert inference["inferer"]["roi_size"] == [32, 32, 32]
    assert [t["_target_"] for t in inference["preprocessing"]["transforms"]] == [
        "LoadImaged", "Orientationd", "Spacingd", "CopyItemsd", "ScaleIntensityRanged"]

    run_bundle(run_id="run", config_file=str(bundle / "configs/inference.json"), bundle_root=str(bundle),
               dataset_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "monai"))
    assert torch.is_grad_enabled()  # the bundle switches gradients off only around its own forward passes
    assert main(["predict", f"local-dir:{tmp_path / 'run'}", str(tmp_path / "in"), "-o", str(tmp_path / "rep3d"),
                 "--quiet"]) == 0
    for name, image in (("case", phantom.image), ("lung", lung)):
        ours = nib.load(tmp_path / "rep3d" / f"{name}_seg.nii.gz")
        theirs = nib.load(tmp_path / "monai" / f"{name}_seg.nii.gz")
        assert theirs.shape == ours.shape == image.shape
        np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-5)
        label = np.asarray(ours.dataobj)
        assert len(np.unique(label)) > 1  # a label map with content, not a constant
        if name == "lung":  # the premise: rep3d segments inside the lung, so a crop that cut it away would differ
            assert (label[4:26, 6:30, 5:25] > 0).any()
        np.testing.assert_array_equal(np.asarray(theirs.dataobj), label, err_msg=name)


def test_timm_fx_feature_extractor_matches_the_getter():
    import timm

    x = torch.randn(1, 1, 32, 32, 32)
    out, kinds = {}, {}
    for cls in ("fx", "getter"):
        torch.manual_seed(0)
        model = timm.create_model("rep3d_tiny", features_only=True, feature_cls=cls, kernel_size=5).eval()
        kinds[cls] = type(model).__name__
        with torch.no_grad():
            out[cls] = model(x)
    assert kinds == {"fx": "VolumeFeatureGraph", "getter": "VolumeFeatureGetter"}
    assert len(out["fx"]) == 4
    for a, b in zip(out["fx"], out["getter"], strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="feature_cls='dict' is not supported"):
        timm.create_model("rep3d_tiny", features_only=True, feature_cls="dict")
