"""The inference-only layers `optimize_for_inference` swaps in compute the layers they replace."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rep3d
from rep3d.layers import InstanceNorm3dKeepFormat, OneDNNConv3d, instance_norm_channels_last
from rep3d.models import optimize_for_inference, reparameterize_model

CL = torch.channels_last_3d


@pytest.mark.parametrize("shape, conv", [
    ((1, 1, 12, 12, 12), dict(in_channels=1, out_channels=4, kernel_size=3, padding=1)),  # the stem
    ((1, 1, 12, 12, 12), dict(in_channels=1, out_channels=4, kernel_size=1)),  # stays on PyTorch's kernel
    ((2, 6, 10, 9, 8), dict(in_channels=6, out_channels=5, kernel_size=3, padding=1, bias=False)),
    ((1, 4, 9, 9, 9), dict(in_channels=4, out_channels=8, kernel_size=2, stride=2)),
    ((1, 8, 7, 7, 7), dict(in_channels=8, out_channels=8, kernel_size=5, padding=2, groups=8)),
])
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_onednn_conv_computes_conv3d(shape, conv, layout):
    torch.manual_seed(0)
    reference = nn.Conv3d(**conv)
    fast = OneDNNConv3d.from_conv(reference)
    assert fast.weight is reference.weight and fast.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(shape)
    if layout == "channels_last":
        x, fast = x.contiguous(memory_format=CL), fast.to(memory_format=CL)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x.contiguous()), rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, expected = fast(x), reference(x.contiguous())
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)


def test_bf16_without_onednn_support_takes_pytorchs_convolution(monkeypatch):
    """On a CPU without AVX-512 (or AVX-NE-CONVERT) oneDNN refuses bfloat16 convolutions: the layer must not ask."""
    import rep3d.layers.onednn_conv as module

    monkeypatch.setattr(module, "onednn_supports", lambda dtype: dtype == torch.float32)
    called = []
    real = torch.ops.aten.mkldnn_convolution
    monkeypatch.setattr(torch.ops.aten, "mkldnn_convolution", lambda *a: called.append(a) or real(*a))
    torch.manual_seed(0)
    reference = nn.Conv3d(4, 6, 3, padding=1)
    fast = OneDNNConv3d.from_conv(reference)
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = fast(x), reference(x)
    assert not called and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=0)
    with torch.no_grad():
        fast(x)
    assert called  # float32 still takes oneDNN's kernel


def test_onednn_conv_trains_like_conv3d():
    torch.manual_seed(0)
    reference = nn.Conv3d(3, 4, 3, padding=1)
    fast = OneDNNConv3d.from_conv(reference)
    x = torch.randn(1, 3, 6, 6, 6, requires_grad=True)
    fast(x).square().sum().backward()
    assert x.grad is not None and reference.weight.grad is not None  # the shared parameter got its gradient


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("shape, mean, std", [((1, 12, 16, 16, 16), 2.0, 3.0), ((3, 5, 8, 9, 10), 2.0, 3.0),
                                              ((1, 4, 24, 24, 24), 100.0, 1.0)])  # no E[x^2] - E[x]^2 cancellation
def test_channels_last_instance_norm_is_within_float32_rounding_of_float64(shape, mean, std, inplace):
    torch.manual_seed(0)
    x = (torch.randn(shape) * std + mean).contiguous(memory_format=CL)
    expected = F.instance_norm(x.double().contiguous(), eps=1e-5)
    original = x.clone()
    got = instance_norm_channels_last(x, eps=1e-5, inplace=inplace)
    assert got.is_contiguous(memory_format=CL)
    assert (got.double() - expected).abs().max() < 5e-5  # the group-norm form: 4e-4, and 0.085 at mean 100
    if inplace:
        assert got.data_ptr() == x.data_ptr()
    else:
        assert torch.equal(x, original)


def test_the_keep_format_norm_leaves_its_input_alone_unless_told():
    x = torch.randn(1, 4, 6, 6, 6).contiguous(memory_format=CL)
    original = x.clone()
    with torch.no_grad():
        InstanceNorm3dKeepFormat()(x)
    assert torch.equal(x, original)


@pytest.mark.parametrize("grad", [False, True])
def test_the_keep_format_norm_is_accurate_where_channel_means_are_far_from_zero(grad):
    # a trained decoder's channels sit tens of standard deviations from zero; PyTorch's channels-last group norm
    # (one pass, E[x^2] - E[x]^2) is 1e-3 to 1e-2 off float64 there, at every size
    torch.manual_seed(0)
    means = torch.linspace(-30.0, 30.0, 12).view(1, 12, 1, 1, 1)
    x = (torch.randn(1, 12, 16, 16, 16) + means).contiguous(memory_format=CL)
    expected = F.instance_norm(x.double().contiguous(), eps=1e-5)
    assert (F.group_norm(x, 12, eps=1e-5).double() - expected).abs().max() > 1e-4  # the form this replaced
    with torch.set_grad_enabled(grad):
        got = InstanceNorm3dKeepFormat()(x)
    assert (got.double() - expected).abs().max() < 2e-5
    assert grad or got.is_contiguous(memory_format=CL)  # without gradients it keeps the layout


def test_the_optimized_copy_matches_the_model():
    torch.manual_seed(0)
    model = reparameterize_model(rep3d.create_model("rep3d_tiny", num_classes=3).eval())
    fast = optimize_for_inference(model)
    assert any(isinstance(m, OneDNNConv3d) for m in fast.modules())
    assert any(getattr(m, "inplace", False) for m in fast.modules() if isinstance(m, InstanceNorm3dKeepFormat))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = fast(x.contiguous(memory_format=CL))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5)


def test_the_norm_benchmark_runs_and_shows_the_one_pass_error(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "instance_norm.py"
    out = tmp_path / "norm.json"
    subprocess.run([sys.executable, str(bench), "--model", "rep3d_tiny", "--roi", "32", "--threads", "1",
                    "--repeats", "1", "--offsets", "0", "30", "--forward", "1", "--out", str(out)],
                   check=True, capture_output=True, cwd=bench.parent)
    result = json.loads(out.read_text())
    far = [r for r in result["shapes"] if r["offset_std"] == 30]
    assert far and all(r["two-pass error"] < 2e-5 for r in far)
    assert max(r["group norm error"] for r in far) > 1e-3
    assert result["forward"]["max_abs_error_vs_as_built_relative"]["two-pass"] < 1e-4
