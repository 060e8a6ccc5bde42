"""timm's and MONAI's own model tests, rewritten for rep3d's 3-D segmentation models and run on every registered name.

Peers mirrored (read from their published sources, re-written here, not copied):

* timm 1.0.x ``tests/test_models.py`` (huggingface/pytorch-image-models): ``test_model_forward``,
  ``test_model_backward``, ``test_model_default_cfgs``, ``test_model_load_pretrained``,
  ``test_model_forward_torchscript``, ``test_model_forward_features``, ``test_model_forward_intermediates_features``,
  ``test_model_forward_intermediates``, ``test_model_forward_fx``, ``test_model_backward_fx``,
  ``test_model_forward_fx_torchscript``, ``test_model_forward_torchscript_with_features_fx``; timm's builder
  (``timm/models/_builder.py``, ``build_model_with_cfg``) for the ``feature_cfg`` keys and feature wrappers.
* MONAI ``tests/networks/nets/test_unetr.py`` (shape, ill arguments, script), ``tests/test_utils.py``
  ``test_script_save`` (``convert_to_torchscript(verify=True)`` at its default ``rtol=1e-4, atol=0``),
  ``tests/inferers/test_sliding_window_inference.py``, and the MONAI Bundle specification
  (``docs/source/mb_specification.rst``: required files and metadata keys) with ``ConfigWorkflow``
  (``tests/bundle/test_bundle_workflow.py``).

Adaptations: inputs are ``[B, C, D, H, W]`` volumes (32^3 mostly; multiples of the stride 16), classes are on axis
1, the 3-D layout is ``"NCDHW"``. So that the file stays fast, every model is built with ``kernel_size=5`` and the
small / base / large names with narrow widths (8/16/24/32, decoder 32): each registered name keeps its class, block
type, mask, small branch and depths, which is what the contracts exercise. Built models are cached per name.

Checks judged inapplicable, with the reason:

* ``test_model_default_cfgs``: ``pool_size``, ``forward_head(pre_logits=True)``, the pooled ``[B, num_features]``
  output after ``reset_classifier(0)`` and ``reset_classifier(0, '')`` / ``create_model(num_classes=0,
  global_pool='')``: a segmentation network has no global pool and no pre-logits vector; its head is a 1x1x1 conv
  over the decoder's full-resolution map. ``reset_classifier(0)`` removes that conv and the forward returns the map,
  ``[B, num_features, D, H, W]`` (tested); building with ``num_classes=0`` is refused in favour of ``features_only``
  (construction-time validation, tests/test_untrusted_models.py).
* ``test_model_default_cfgs``: "``forward_features`` output has ``num_features`` channels": a U-Net has no single
  final map; ``forward_features`` returns the four encoder maps, and ``num_features`` is the channel count of the map
  the classifier reads (tested against the classifier conv).
* ``test_model_forward_intermediates``: ``allclose(final, forward_features(x))`` is compared with the last element
  of the ``forward_features`` list, for the same reason.
* ``test_model_default_cfgs_non_std``: covers timm's transformer families (ViT, Swin, ...) only.
* ``test_model_inference``: compares against reference outputs stored on the Hub for timm's ``test_*`` models; rep3d
  has none (its bundled weights are checked in tests/test_hub.py and tests/test_models.py).
* ``test_model_features_pretrained``: only ``rep3d_tiny.phantom`` has weights; ``test_model_load_pretrained`` below
  loads them, ``features_only`` on loaded weights is the same wrapper.
* naflexvit / gemma4 tests: specific to those timm families.
* ``feature_cls='list'`` / ``'dict'`` (timm's ``FeatureListNet`` / ``FeatureDictNet``): they re-run the model's
  top-level children one after another, which an encoder + decoder network is not; rep3d refuses them clearly
  (``'hook'``, ``'fx'``, ``'getter'`` and a wrapper class are honoured).
* ``output_fmt`` ``'NCHW'`` / ``'NHWC'``: 2-D layouts; rep3d accepts ``'NCDHW'`` and refuses the others.
* MONAI ``test_onnx_save``: ONNX export and its verification live in tests/test_export.py.
"""

import copy
import functools
import json
import math

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import rep3d
from rep3d.errors import Rep3DError

NAMES = rep3d.list_models()
SMALL = dict(kernel_size=5)  # every registered architecture, with a kernel small enough for a fast test file
NARROW = dict(widths=(8, 16, 24, 32), hidden_size=32)  # the small / base / large widths shrunk (topology kept)


def small_args(name: str) -> dict:
    """Build arguments that keep ``name``'s block, mask, branches and depths but make it cheap to run."""
    return dict(SMALL) if name.startswith("rep3d_tiny") else {**SMALL, **NARROW}
SIZE = (32, 32, 32)  # the smallest volume whose deepest map (2^3) instance norm accepts


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


@functools.cache
def _cached(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return rep3d.create_model(name, **small_args(name), **kwargs).eval()


def built(name: str, **kwargs) -> torch.nn.Module:
    """A fresh eval-mode copy of the cached ``name`` model (tests may change it)."""
    return copy.deepcopy(_cached(name, **kwargs))


def volume(*size: int, batch: int = 1, chans: int = 1) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, chans, *(size or SIZE))


def _fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    # timm's _create_fx_model: trace with timm's leaf modules / autowrapped functions, return the last node
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


# --- timm: tests/test_models.py --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_model_forward(name):
    """timm ``test_model_forward``: one forward, batch kept, no NaN; grad checkpointing keeps the output."""
    model = built(name)
    x = volume()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes, *SIZE)
        assert not torch.isnan(out).any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_model_backward(name):
    """timm ``test_model_backward``: ``num_classes=42`` in train mode; every parameter gets a gradient."""
    model = built(name, num_classes=42).train()
    out = model(volume(batch=2))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert out.shape[1] == 42  # classes on axis 1
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("name", NAMES + rep3d.list_models(pretrained=True))
def test_model_default_cfgs(name):
    """timm ``test_model_default_cfgs`` (cfg names, ``num_features``, ``head_hidden_size``, ``reset_classifier``),
    without the pooled-head checks (module docstring)."""
    model = built(name) if "." not in name else timm.create_model(name, **small_args(name))
    cfg = model.default_cfg
    state = model.state_dict()
    assert model.num_classes >= 0
    assert model.num_features > 0 and model.head_hidden_size > 0
    classifier = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    for c in classifier:
        assert c + ".weight" in state, f"{c} not in model params"
        assert model.get_submodule(c).in_channels == model.num_features == model.head_hidden_size
    first_conv = cfg["first_conv"]
    first_conv = (first_conv,) if isinstance(first_conv, str) else first_conv
    assert isinstance(first_conv, (tuple, list)) and first_conv
    for fc in first_conv:
        assert fc + ".weight" in state, f"{fc} not in model params"
        assert model.get_submodule(fc).in_channels == model.in_chans
    model.reset_classifier(5, None)  # timm's signature: (num_classes, global_pool=None)
    assert model.num_classes == 5
    with torch.no_grad():
        assert model(volume()).shape[1] == 5


def test_model_load_pretrained():
    """timm ``test_model_load_pretrained``: every tag with weights loads with ``in_chans=1, num_classes=5``."""
    for name in rep3d.list_models(pretrained=True):
        if "." in name:
            with pytest.warns(UserWarning):  # the re-initialised head is announced
                model = timm.create_model(name, pretrained=True, in_chans=1, num_classes=5)
            assert model.num_classes == 5


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_torchscript(name):
    """timm ``test_model_forward_torchscript``: ``torch.jit.script`` of the model runs; batch kept, no NaN."""
    scripted = torch.jit.script(built(name))
    with torch.no_grad():
        out = scripted(volume())
    assert out.shape[0] == 1 and not torch.isnan(out).any()


@pytest.mark.parametrize("feature_cls", [None, "getter", "fx", "hook"])
@pytest.mark.parametrize("name", NAMES)
def test_model_forward_features(name, feature_cls):
    """timm ``test_model_forward_features`` / ``test_model_forward_intermediates_features``: ``features_only`` with
    each honoured ``feature_cls`` gives ``feature_info.channels()`` maps at ``feature_info.reduction()``."""
    kwargs = {} if feature_cls is None else dict(feature_cls=feature_cls)
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, **small_args(name), **kwargs).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    with torch.no_grad():
        out = model(volume(32, 32, 32))
    assert len(out) == len(channels)
    for c, r, o in zip(channels, reductions, out, strict=True):
        assert o.shape[1] == c and o.shape[0] == 1
        assert all(s <= math.ceil(32 / r) + 1 for s in o.shape[2:])
        assert not torch.isnan(o).any()


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_intermediates(name):
    """timm ``test_model_forward_intermediates``: ``final, intermediates = forward_intermediates(x, output_fmt)`` with
    timm's defaults; ``final`` equals the last ``forward_features`` map; checkpointing keeps it."""
    model = built(name)
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = volume(32, 32, 32)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt="NCDHW")
        assert len(intermediates) == len(info.channels())
        for c, r, o in zip(info.channels(), info.reduction(), intermediates, strict=True):
            assert o.shape[1] == c and all(s <= math.ceil(32 / r) + 1 for s in o.shape[2:])
        torch.testing.assert_close(final, model.forward_features(x)[-1])
        model.set_grad_checkpointing()
        final2, _ = model.forward_intermediates(x, output_fmt="NCDHW")
        torch.testing.assert_close(final2, final, rtol=1e-4, atol=1e-5)


def test_forward_intermediates_has_timms_signature_and_defaults():
    """timm's ``forward_intermediates(x, indices=None, norm=False, stop_early=False, output_fmt, intermediates_only=
    False)``: defaults as timm's, so ``final, feats = model.forward_intermediates(x)`` unpacks."""
    import inspect

    for model in (built("rep3d_tiny"), built("rep3d_tiny").encoder):
        params = inspect.signature(model.forward_intermediates).parameters
        assert params["norm"].default is False
        assert params["stop_early"].default is False
        assert params["intermediates_only"].default is False
        assert params["output_fmt"].default == "NCDHW"
        with torch.no_grad():
            final, feats = model.forward_intermediates(volume())
        assert torch.is_tensor(final) and len(feats) == 4


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_fx(name):
    """timm ``test_model_forward_fx``: torchvision's fx feature extractor on the full model equals eager."""
    model = built(name)
    x = volume()
    with torch.inference_mode():
        eager = model(x)
        fx_out = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.equal(fx_out, eager)


@pytest.mark.parametrize("name", NAMES)
def test_model_backward_fx(name):
    """timm ``test_model_backward_fx``: the traced model (train mode, ``num_classes=42``) back-propagates to every
    parameter."""
    model = _fx_model(built(name, num_classes=42).train(), train=True)
    out = torch.cat(tuple(model(volume(batch=2)).values()))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert out.shape[1] == 42


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_fx_torchscript(name):
    """timm ``test_model_forward_fx_torchscript``: the fx-traced model scripts (no postponed annotations in the way)."""
    scripted = torch.jit.script(_fx_model(built(name)))
    with torch.inference_mode():
        out = torch.cat(tuple(scripted(volume()).values()))
    assert out.shape[0] == 1 and not torch.isnan(out).any()


@pytest.mark.parametrize("feature_cfg", [None, {"feature_cls": "fx"}])
@pytest.mark.parametrize("name", NAMES)
def test_model_forward_torchscript_with_features(name, feature_cfg):
    """timm ``test_model_forward_torchscript_with_features_fx``: a ``features_only`` model (default wrapper and
    ``feature_cfg={"feature_cls": "fx"}``) scripts and returns a list of maps."""
    kwargs = {} if feature_cfg is None else dict(feature_cfg=feature_cfg)
    model = timm.create_model(name, features_only=True, **small_args(name), **kwargs).eval()
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        out = scripted(volume())
    assert isinstance(out, list) and len(out) == 4
    assert all(t.shape[0] == 1 and not torch.isnan(t).any() for t in out)


# --- timm: feature_cfg, feature extractors on the full model ---------------------------------------------------


@pytest.mark.parametrize("feature_cls", ["getter", "fx", "hook"])
def test_feature_cfg_is_honoured_like_timms_builder(feature_cls):
    """timm ``build_model_with_cfg``: ``feature_cfg=dict(out_indices=..., feature_cls=...)`` picks the wrapper and
    the maps (rep3d silently returned the default extractor with all 4 maps)."""
    model = timm.create_model("rep3d_tiny", features_only=True, **SMALL,
                              feature_cfg=dict(out_indices=(1, 2), feature_cls=feature_cls)).eval()
    assert model.feature_info.channels() == [24, 48]
    with torch.no_grad():
        out = model(volume())
    assert [o.shape[1] for o in out] == [24, 48]
    explicit = timm.create_model("rep3d_tiny", features_only=True, **SMALL, out_indices=(1, 2),
                                 feature_cls=feature_cls)
    assert type(model) is type(explicit)


def test_feature_cfg_keys_rep3d_cannot_honour_are_refused():
    """timm's builder keys without a 3-D meaning are refused by name, never ignored."""
    for cfg, word in ((dict(feature_cls="list"), "'list'"), (dict(feature_cls="dict"), "'dict'"),
                      (dict(output_fmt="NHWC"), "output_fmt"), (dict(flatten_sequential=True), "flatten_sequential"),
                      (dict(unknown_key=1), "unknown_key")):
        with pytest.raises(Rep3DError, match=word):
            timm.create_model("rep3d_tiny", features_only=True, **SMALL, feature_cfg=cfg)


def test_feature_cfg_output_fmt_ncdhw_and_return_dict_are_honoured():
    """``output_fmt='NCDHW'`` is accepted; ``return_dict=True`` returns timm's dict of maps (hook / fx)."""
    for cls in ("hook", "fx"):
        model = timm.create_model("rep3d_tiny", features_only=True, **SMALL,
                                  feature_cfg=dict(feature_cls=cls, output_fmt="NCDHW", return_dict=True)).eval()
        with torch.no_grad():
            out = model(volume())
        assert isinstance(out, dict) and len(out) == 4


def test_feature_cfg_accepts_a_wrapper_class():
    """timm's builder also takes a class as ``feature_cls``: it is called as ``cls(model, out_indices=...)``."""
    model = timm.create_model("rep3d_tiny", features_only=True, **SMALL,
                              feature_cfg=dict(feature_cls=timm.models.FeatureHookNet, out_indices=(0, 3))).eval()
    assert isinstance(model, timm.models.FeatureHookNet)
    assert model.feature_info.channels() == [12, 96]


@pytest.mark.parametrize("name", NAMES)
def test_feature_info_module_paths_resolve_in_the_model_that_carries_them(name):
    """timm's ``FeatureHookNet`` / ``FeatureGraphNet`` and torchvision's ``create_feature_extractor`` built on the full
    model from its ``feature_info`` give the encoder features."""
    model = built(name)
    modules = dict(model.named_modules())
    assert all(info["module"] in modules for info in model.feature_info)
    assert all(info["module"] in dict(model.encoder.named_modules()) for info in model.encoder.feature_info)
    x = volume()
    with torch.no_grad():
        ref = model.forward_intermediates(x, norm=True, intermediates_only=True)
        hooked = timm.models.FeatureHookNet(copy.deepcopy(model), out_indices=(0, 1, 2, 3))(x)
        graph = timm.models.FeatureGraphNet(copy.deepcopy(model), out_indices=(0, 1, 2, 3))(x)
        tv = create_feature_extractor(model, [info["module"] for info in model.feature_info])(x)
    for outs in (hooked, graph, list(tv.values())):
        for a, b in zip(outs, ref, strict=True):
            torch.testing.assert_close(a, b)


# --- timm: head removal, attributes, arguments -------------------------------------------------------------------


def test_reset_classifier_zero_removes_the_head_and_returns_the_decoder_features():
    """timm ``test_model_default_cfgs`` / ``FeatureHookNet``: ``reset_classifier(0)`` removes the head; the forward
    returns the map the head read, ``num_features`` channels (it failed deep inside conv3d)."""
    model = built("rep3d_tiny")
    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        out = model(volume())
    assert out.shape == (1, model.num_features, *SIZE)
    model.reset_classifier(3, "")
    with torch.no_grad():
        assert model(volume()).shape == (1, 3, *SIZE)


@pytest.mark.parametrize("num_classes", [-1, 2.0, True])
def test_reset_classifier_refuses_a_class_count_it_cannot_build(num_classes):
    """A negative or non-int count is refused with a pointer to ``features_only`` (it was a raw RuntimeError)."""
    model = built("rep3d_tiny")
    with pytest.raises(Rep3DError, match="features_only"):
        model.reset_classifier(num_classes)
    with pytest.raises(Rep3DError, match="global_pool"):
        model.reset_classifier(3, "avg")
    assert model.num_classes == 16  # unchanged


def test_unknown_keyword_argument_names_the_model_and_lists_the_accepted_ones():
    """A typo or a timm classifier kwarg (``drop_rate``) names the model and the argument and lists accepted ones,
    instead of blaming an inner layer."""
    for kwarg in ("drop_rate", "kernal_size"):
        with pytest.raises(Rep3DError) as err:
            rep3d.create_model("rep3d_tiny", **{kwarg: 3})
        message = str(err.value)
        assert "rep3d_tiny" in message and kwarg in message and "kernel_size" in message
        assert "RepLKConv3d.__init__" not in message


def test_no_module_defining_a_scriptable_module_postpones_annotations():
    """``from __future__ import annotations`` turns annotations into strings that fx -> TorchScript cannot resolve
    (``Unknown type name '_torch_Tensor_'``); the modules that define rep3d's nn.Modules must not use it."""
    import pathlib

    root = pathlib.Path(rep3d.__file__).parent
    offenders = [str(p.relative_to(root)) for sub in ("layers", "models") for p in (root / sub).glob("*.py")
                 if "from __future__ import annotations" in p.read_text()]
    assert not offenders


# --- MONAI: network tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_monai_shape(name):
    """MONAI ``test_unetr`` ``test_shape``: ``in_chans=2, num_classes=3`` on a non-cubic volume -> ``[B, 3, *size]``."""
    model = built(name, in_chans=2, num_classes=3)
    with torch.no_grad():
        out = model(volume(32, 48, 32, batch=2, chans=2))
    assert out.shape == (2, 3, 32, 48, 32)


def test_monai_ill_arguments():
    """MONAI ``test_unetr`` ``test_ill_arg``: bad arguments and inputs raise ``ValueError`` (rep3d's, one line)."""
    model = built("rep3d_tiny")
    bad_calls = [
        lambda: rep3d.create_model("rep3d_tiny", widths=(8, 16, 32)),
        lambda: rep3d.create_model("rep3d_tiny", block="transformer"),
        lambda: rep3d.create_model("rep3d_tiny", kernel_size=4),
        lambda: model(volume(40, 32, 32)),
        lambda: model(volume(chans=2)),
        lambda: model.reset_classifier(-1),
        lambda: rep3d.create_model("rep3d_tiny", drop_rate=0.1),
    ]
    for call in bad_calls:
        with pytest.raises((ValueError, TypeError)) as err:
            call()
        assert isinstance(err.value, Rep3DError), repr(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_monai_script_save_at_default_tolerance(name):
    """MONAI ``test_script_save``: ``convert_to_torchscript(verify=True)`` at its default ``rtol=1e-4, atol=0``, with
    the FFT engine forced in eager (the scripted model must compute the same; it ran the direct conv)."""
    from monai.networks.utils import convert_to_torchscript

    model = built(name, conv_backend="fft")
    convert_to_torchscript(model, verify=True, inputs=[volume()], device="cpu")


def test_monai_script_save_with_the_registered_kernel():
    """The issue's case: ``rep3d_tiny`` with its 21^3 kernels at 32^3, engine ``auto`` (FFT in eager)."""
    from monai.networks.utils import convert_to_torchscript

    torch.manual_seed(0)
    model = rep3d.create_model("rep3d_tiny").eval()
    convert_to_torchscript(model, verify=True, inputs=[volume(32, 32, 32)], device="cpu")


@pytest.mark.parametrize("backend", ["auto", "direct", "fft"])
def test_scripted_layer_computes_exactly_what_eager_computes(backend):
    """The engine behind MONAI's script-save check: a scripted ``RepLKConv3d`` equals eager bit for bit (kernel crop,
    engine, FFT lengths and product), also where the kernel outgrows the input (it ran the direct conv, ~1e-6
    from eager's FFT)."""
    from rep3d.layers import RepLKConv3d

    for kernel, size in ((21, (32, 32, 32)), (21, (6, 6, 6)), (7, (9, 10, 11))):
        torch.manual_seed(0)
        conv = RepLKConv3d(6, kernel, small_kernel=3, conv_backend=backend).eval()
        x = torch.randn(2, 6, *size)
        with torch.no_grad():
            assert torch.equal(torch.jit.script(conv)(x), conv(x)), (kernel, size)


def test_scripted_engine_choice_matches_the_eager_cost_model():
    """``"auto"`` in TorchScript picks the engine eager's ``choose_backend`` picks (CPU model and CUDA rule), and its
    restated constants are eager's."""
    import itertools

    from rep3d.layers import scripted_engine
    from rep3d.layers.depthwise import COST_MODEL, CUDA_RULE, choose_backend
    from rep3d.layers.settings import EngineSettings

    for grad in (False, True):
        direct, fft = scripted_engine._cost_coefficients(grad)
        assert (tuple(direct), tuple(fft)) == COST_MODEL[grad]
        for kind in ("float64", "float32", "half"):
            assert scripted_engine._cuda_fft_flop_weight(grad, kind) == CUDA_RULE["fft_flop_weight"][(grad, kind)]
    defaults = EngineSettings()
    assert defaults.save_spectra is None and scripted_engine._save_spectra_bytes() == defaults.save_spectra_bytes
    assert [scripted_engine._chunk_bytes(d) for d in ("cpu", "cuda")] == [defaults.chunk_budget(d)
                                                                         for d in ("cpu", "cuda")]
    choose = torch.jit.script(scripted_engine.scripted_choose_backend)
    grid = itertools.product([1, 2], [8, 48, 384], [3, 6, 12, 24, 48, 96], [3, 7, 21], ["cpu", "cuda"],
                             [torch.float32, torch.float64, torch.float16], [False, True])
    for batch, chans, size, kernel, device, dtype, grad in grid:
        shape, cropped = (batch, chans, size, size, size), (min(kernel, 2 * size - 1),) * 3
        assert choose(list(shape), list(cropped), device, dtype, grad) == choose_backend(shape, cropped, device,
                                                                                         dtype, grad)


@pytest.mark.parametrize("name", NAMES)
def test_monai_sliding_window_inference(name):
    """MONAI ``test_sliding_window_inference``: a volume larger than the ROI, overlapping windows -> full-size
    logits."""
    from monai.inferers import sliding_window_inference

    model = built(name)
    with torch.no_grad():
        out = sliding_window_inference(volume(40, 36, 32), roi_size=SIZE, sw_batch_size=2, predictor=model,
                                       overlap=0.25)
    assert out.shape == (1, model.num_classes, 40, 36, 32)


# --- MONAI: bundle ------------------------------------------------------------------------------------------------

# The MONAI Bundle specification (Project-MONAI/MONAI docs/source/mb_specification.rst, "metadata.json File"): its
# mandatory keys and the keys every tensor format specifier must have, with the JSON types the bundle schema gives
# them (strings, an object of package versions, a list for shape and range, a boolean for is_patch_data).
SPEC_REQUIRED = {"version": str, "monai_version": str, "pytorch_version": str, "numpy_version": str,
                 "required_packages_version": dict, "task": str, "description": str, "authors": str,
                 "copyright": str, "network_data_format": dict}
SPEC_TENSOR = {"type": str, "format": str, "modality": str, "num_channels": int, "spatial_shape": list,
               "dtype": str, "value_range": list, "is_patch_data": bool, "channel_def": dict}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from rep3d.export.monai_bundle import write_monai_bundle

    torch.manual_seed(0)
    model = rep3d.reparameterize_model(
        rep3d.create_model("rep3d_tiny", num_classes=3, **SMALL,
                           pretrained_cfg_overlay=dict(roi_size=(32, 32, 32), class_names=["bg", "a", "b"]))).eval()
    folder = tmp_path_factory.mktemp("bundle") / "rep3d_tiny"
    write_monai_bundle(model, folder, roi=(32, 32, 32))
    return folder, model


def test_monai_bundle_has_the_files_the_spec_requires(bundle):
    """MONAI Bundle spec, "Directory Structure": ``LICENSE``, ``configs/metadata.json``, ``models/model.pt`` (the
    state dict, loadable without unpickling code) besides the optional ``models/model.ts``."""
    folder, model = bundle
    for part in ("LICENSE", "configs/metadata.json", "models/model.pt", "models/model.ts", "docs/README.md"):
        assert (folder / part).is_file(), part
    assert (folder / "LICENSE").read_text().strip()
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    assert state.keys() == model.state_dict().keys()


def test_monai_bundle_metadata_has_every_required_field_typed(bundle):
    """MONAI Bundle spec, "metadata.json File": the ``schema`` URL and every mandatory key with its type, and every
    tensor specifier's keys."""
    folder, _ = bundle
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    assert isinstance(meta.get("schema"), str) and meta["schema"].startswith("https://")
    for key, kind in SPEC_REQUIRED.items():
        assert isinstance(meta.get(key), kind), key
    for side in ("inputs", "outputs"):
        specs = meta["network_data_format"][side]
        assert specs
        for spec in specs.values():
            for key, kind in SPEC_TENSOR.items():
                assert isinstance(spec.get(key), kind), key


def test_monai_bundle_loads_in_config_workflow_infer(bundle):
    """MONAI ``ConfigWorkflow(workflow_type="infer")`` (``tests/bundle/test_bundle_workflow.py``): the bundle has the
    ``evaluator`` and the other required inference properties, initialises and runs."""
    import nibabel as nib
    import numpy as np
    from monai.bundle import ConfigWorkflow

    folder, _ = bundle
    data = folder.parent / "data"
    data.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(36, 34, 32)).astype("float32"), np.eye(4)),
             data / "case.nii.gz")
    workflow = ConfigWorkflow(config_file=str(folder / "configs" / "inference.json"),
                              meta_file=str(folder / "configs" / "metadata.json"), workflow_type="infer",
                              bundle_root=str(folder), dataset_dir=str(data), output_dir=str(folder.parent / "out"))
    workflow.initialize()
    assert not workflow.check_properties()  # no required property missing
    workflow.run()
    workflow.finalize()
    assert (folder.parent / "out" / "case_seg.nii.gz").is_file()
