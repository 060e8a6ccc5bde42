"""The FFT engine with matrix-product transforms (the form ONNX exports hold) computes the same convolution."""

import pytest
import torch
import torch.nn.functional as F

from rep3d.layers import depthwise_conv3d
from rep3d.layers.dft_matmul import dft_as_matmul, dft_as_matmul_active, matmul_dft_conv3d
from rep3d.layers.fft_conv import fft_depthwise_conv3d


@pytest.mark.parametrize(("spatial", "kernel"), [((8, 9, 10), (7, 5, 9)), ((5, 6, 7), (9, 15, 17)),
                                                 ((4, 4, 4), (7, 7, 7))],
                         ids=["odd_and_even", "kernel_cropped_to_2S-1", "cube"])
def test_matmul_dft_conv_equals_the_zero_padded_conv_and_the_fft_engine(spatial, kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    weight = torch.randn(3, 1, *kernel, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    useful = [min(k, 2 * s - 1) for k, s in zip(kernel, spatial)]
    crop = tuple(slice((k - u) // 2, (k + u) // 2) for k, u in zip(kernel, useful))
    cropped = weight[(slice(None), slice(None), *crop)]
    reference = F.conv3d(x, weight, bias, padding=[k // 2 for k in kernel], groups=3)
    torch.testing.assert_close(matmul_dft_conv3d(x, cropped, bias), reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(matmul_dft_conv3d(x, cropped, bias), fft_depthwise_conv3d(x, cropped, bias),
                               rtol=0, atol=1e-10)


def test_dft_as_matmul_switches_the_fft_engine_only_inside_the_block(monkeypatch):
    calls = []
    monkeypatch.setattr("rep3d.layers.depthwise.matmul_dft_conv3d",
                        lambda *a: calls.append(1) or matmul_dft_conv3d(*a))
    x, weight = torch.randn(1, 2, 6, 6, 6), torch.randn(2, 1, 5, 5, 5)
    with torch.no_grad():
        outside = depthwise_conv3d(x, weight, backend="fft")
        with dft_as_matmul():
            assert dft_as_matmul_active()
            inside = depthwise_conv3d(x, weight, backend="fft")
    assert not dft_as_matmul_active() and len(calls) == 1
    torch.testing.assert_close(inside, outside, rtol=1e-5, atol=1e-5)
