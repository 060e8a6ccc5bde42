"""Export a folded rep3d model to ONNX, TorchScript, a ``torch.export`` program or a MONAI bundle, verified.

Every exporter writes its file, loads it back in its own runtime (onnxruntime, ``torch.jit.load``,
``torch.export.load``) and compares it with eager PyTorch on a fresh random input before it reports success
(:func:`verify`). The files need no rep3d to run: TorchScript and exported programs hold plain ``aten`` graphs.

One module per format (:mod:`~rep3d.export.onnx`, :mod:`~rep3d.export.torchscript`,
:mod:`~rep3d.export.exported_program`, :mod:`~rep3d.export.monai_bundle`), listed in
:data:`~rep3d.export.formats.EXPORT_FORMATS` with how each is loaded back; :mod:`~rep3d.export.verify` is the one
verification step they all go through, and :mod:`~rep3d.export.pipeline` (:func:`export_model`) stages, verifies and
installs the file.

Which large-kernel conv path a graph holds:

* TorchScript: the eager engine restated in TorchScript (:mod:`rep3d.layers.scripted_engine`: the same crop,
  choice and FFT per call), so batch and spatial sizes are dynamic and outputs equal eager's.
* exported program / ONNX with static shapes: the engine ``conv_backend`` picks at the export ROI, per layer
  (``"auto"``: the cost model), the kernel cropped to what meets a map of that size. In ONNX the FFT engine's
  transforms become ``MatMul`` ops with the shortest exact lengths (:mod:`rep3d.layers.dft_matmul`): onnxruntime's
  ``DFT`` kernel was an order of magnitude slower than this on CPU (benchmarks/README.md, "Export").
* exported program / ONNX with ``dynamic={"batch"}`` or ``{"spatial"}``: the direct engine (its graph does not
  depend on the sizes; dynamic spatial sizes also drop the size-dependent crop). Spatial sizes stay multiples of
  the network's stride (16) and at least two strides.
"""

from rep3d.export.conv_plan import ConvPlan, Engine, conv_path, conv_plan
from rep3d.export.exported_program import export_program
from rep3d.export.formats import EXPORT_FORMATS, FORMAT_MODULES, FORMATS, ExportFormat, ExportJob, require_format
from rep3d.export.onnx import ONNX_OPSET, export_onnx, power_of_two_fft_lengths
from rep3d.export.pipeline import ExportReport, export_model, report_json
from rep3d.export.prepare import (
    DYNAMIC_AXES,
    MAX_DYNAMIC_STRIDES,
    example_input,
    minimum_roi,
    model_roi,
    parse_dynamic,
    prepare_model,
)
from rep3d.export.torchscript import export_torchscript
from rep3d.export.verify import TOLERANCE, ExportVerificationError, load_runner, verification_input, verify

__all__ = [
    "DYNAMIC_AXES",
    "EXPORT_FORMATS",
    "FORMATS",
    "FORMAT_MODULES",
    "MAX_DYNAMIC_STRIDES",
    "ONNX_OPSET",
    "TOLERANCE",
    "ConvPlan",
    "Engine",
    "ExportFormat",
    "ExportJob",
    "ExportReport",
    "ExportVerificationError",
    "conv_path",
    "conv_plan",
    "example_input",
    "export_model",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "load_runner",
    "minimum_roi",
    "model_roi",
    "parse_dynamic",
    "power_of_two_fft_lengths",
    "prepare_model",
    "report_json",
    "require_format",
    "verification_input",
    "verify",
]
