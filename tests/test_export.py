"""Deployment paths: TorchScript, torch.fx, torch.export, ONNX, MONAI bundles, and the ``rep3d export`` command."""

from __future__ import annotations

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
        assert any(getattr(n.target, "__name__", "") == "depthwise_conv3d" for n in graph.graph.nodes)


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
