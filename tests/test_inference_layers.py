"""The inference-only layers `optimize_for_inference` swaps in compute the layers they replace."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rep3d
from rep3d.layers import InstanceNorm3dKeepFormat, OneDNNConv3d, instance_norm_channels_last
from rep3d.layers import norm as norm_module
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


def test_the_keep_format_norm_leaves_its_input_alone_unless_told(monkeypatch):
    monkeypatch.setattr(norm_module, "EXACT_NORM_MIN_VOXELS", 0)
    x = torch.randn(1, 4, 6, 6, 6).contiguous(memory_format=CL)
    original = x.clone()
    with torch.no_grad():
        InstanceNorm3dKeepFormat()(x)
    assert torch.equal(x, original)


@pytest.mark.parametrize("exact_from", [0, 10**9])  # every norm on the two-pass in-place path, or none
def test_the_optimized_copy_matches_the_model_on_every_norm_path(monkeypatch, exact_from):
    monkeypatch.setattr(norm_module, "EXACT_NORM_MIN_VOXELS", exact_from)
    torch.manual_seed(0)
    model = reparameterize_model(rep3d.create_model("rep3d_tiny", num_classes=3).eval())
    fast = optimize_for_inference(model)
    assert any(isinstance(m, OneDNNConv3d) for m in fast.modules())
    assert any(getattr(m, "inplace", False) for m in fast.modules() if isinstance(m, InstanceNorm3dKeepFormat))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = fast(x.contiguous(memory_format=CL))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 if exact_from else 2e-5)
