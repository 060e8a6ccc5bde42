"""Tuning knobs of the depthwise conv engines, as one documented, process-wide setting.

Every knob only trades speed against memory (or float32 summation order); none changes what is computed beyond
rounding. The defaults are the measured best on the calibration CPU (benchmarks/README.md, "Design
measurements"). Read them with :func:`get_engine_settings`; change them for a block of code with
:func:`engine_settings`::

    with rep3d.layers.engine_settings(save_spectra=False, chunk_bytes={"cuda": 2**30}):
        model(x).sum().backward()

Settings are read when an engine call runs, and a forward fixes what its backward uses (an FFT forward decides
there whether to keep its spectra and how to split channels into groups), so a backward run after the ``with``
block still matches its forward. Settings are process-wide (not per thread).
"""

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from rep3d.errors import Rep3DTypeError, Rep3DValueError

FFTLengths = Literal["5-smooth", "power-of-two"]
FFT_LENGTHS: tuple[FFTLengths, ...] = ("5-smooth", "power-of-two")
FFTTransforms = Literal["fft", "matmul"]
FFT_TRANSFORMS: tuple[FFTTransforms, ...] = ("fft", "matmul")
_DEFAULT_CHUNK_BYTES = MappingProxyType({"cpu": 16 * 2**20, "cuda": 512 * 2**20})


@dataclass(frozen=True)
class EngineSettings:
    """The engines' knobs (immutable; :func:`engine_settings` swaps in a modified copy).

    Attributes:
        chunk_bytes: budget per device type (``"cpu"``, ``"cuda"``; other device types use ``"cuda"``'s) for
            the complex spectrum of one FFT channel group. On CPU 16 MiB keeps every large buffer below glibc's
            32 MiB mmap threshold, so allocations are recycled instead of page-faulted in afresh on each call
            (2.1-2.4x faster than one group at 48-64^3); on CUDA the caching allocator has no such cost and the
            budget only bounds peak memory.
        save_spectra: keep the FFT forward's input and kernel spectra for the backward instead of recomputing
            them (15-25 % faster forward+backward at about 2x the layer input in memory). ``None``: only while
            they take at most ``save_spectra_bytes``; ``True`` / ``False``: always / never.
        save_spectra_bytes: the size limit of ``save_spectra=None``.
        grad_w_slab_voxels: the direct engine sums its kernel gradient over depth slabs of at most this many
            voxels per map, which keeps the float32 error of the 10^5-term sums at the forward's level.
        fft_lengths: how the FFT engine rounds its transform lengths up from the exactness bound: ``"5-smooth"``
            (the sizes PyTorch's FFT runs fastest) or ``"power-of-two"`` (what onnxruntime's ``DFT`` kernel runs
            without Bluestein's algorithm; :func:`rep3d.export.export_onnx` with ``fft_transforms="dft"``). Both
            are exact.
        fft_transforms: how the FFT engine computes its transforms: ``"fft"`` (``torch.fft``) or ``"matmul"``
            (the same exact convolution as matrix products, :func:`rep3d.layers.dft_matmul.matmul_dft_conv3d`:
            what :func:`rep3d.export.export_onnx` writes, since onnxruntime runs MatMul far faster than ``DFT``).
    """

    chunk_bytes: Mapping[str, int] = field(default_factory=lambda: _DEFAULT_CHUNK_BYTES)
    save_spectra: bool | None = None
    save_spectra_bytes: int = 64 * 2**20
    grad_w_slab_voxels: int = 2**14
    fft_lengths: FFTLengths = "5-smooth"
    fft_transforms: FFTTransforms = "fft"

    def __post_init__(self) -> None:
        if self.fft_lengths not in FFT_LENGTHS:
            raise Rep3DValueError(f"fft_lengths must be one of {FFT_LENGTHS}, got {self.fft_lengths!r}")
        if self.fft_transforms not in FFT_TRANSFORMS:
            raise Rep3DValueError(f"fft_transforms must be one of {FFT_TRANSFORMS}, got {self.fft_transforms!r}")
        if self.save_spectra not in (None, True, False):
            raise Rep3DTypeError(f"save_spectra must be None, True or False, got {self.save_spectra!r}")
        for name in ("save_spectra_bytes", "grad_w_slab_voxels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Rep3DValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.chunk_bytes, Mapping):
            raise Rep3DTypeError(
                f"chunk_bytes must map device types to bytes, e.g. {{'cuda': 2**29}}, got {self.chunk_bytes!r}"
            )
        for device_type, value in self.chunk_bytes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Rep3DValueError(f"chunk_bytes[{device_type!r}] must be a positive int, got {value!r}")
        if "cuda" not in self.chunk_bytes:
            raise Rep3DValueError("chunk_bytes needs a 'cuda' entry (the budget of non-CPU devices)")
        object.__setattr__(self, "chunk_bytes", MappingProxyType(dict(self.chunk_bytes)))

    def chunk_budget(self, device_type: str) -> int:
        """Bytes of one channel group's spectrum on ``device_type``."""
        return self.chunk_bytes.get(device_type, self.chunk_bytes["cuda"])


_current = EngineSettings()


def get_engine_settings() -> EngineSettings:
    """The settings in force now."""
    return _current


@contextlib.contextmanager
def engine_settings(
    *,
    chunk_bytes: Mapping[str, int] | None = None,
    save_spectra: bool | None | object = ...,
    save_spectra_bytes: int | None = None,
    grad_w_slab_voxels: int | None = None,
    fft_lengths: FFTLengths | None = None,
    fft_transforms: FFTTransforms | None = None,
) -> Iterator[EngineSettings]:
    """Change engine settings inside a ``with`` block; the previous ones come back on exit (also on error).

    Only the arguments given change. ``chunk_bytes`` entries are merged into the current mapping (give
    ``{"cpu": n}`` to change the CPU budget alone). ``save_spectra`` accepts ``None`` (automatic), so "not
    given" is the default ``...``. Invalid values raise :class:`rep3d.errors.Rep3DValueError` (or its
    ``TypeError`` sibling) before anything changes.

    Yields the new :class:`EngineSettings`.
    """
    global _current
    previous = _current
    changes: dict[str, object] = {}
    if chunk_bytes is not None:
        if not isinstance(chunk_bytes, Mapping):
            raise Rep3DTypeError(
                f"chunk_bytes must map device types to bytes, e.g. {{'cuda': 2**29}}, got {chunk_bytes!r}"
            )
        changes["chunk_bytes"] = {**previous.chunk_bytes, **chunk_bytes}
    if save_spectra is not ...:
        changes["save_spectra"] = save_spectra
    if save_spectra_bytes is not None:
        changes["save_spectra_bytes"] = save_spectra_bytes
    if grad_w_slab_voxels is not None:
        changes["grad_w_slab_voxels"] = grad_w_slab_voxels
    if fft_lengths is not None:
        changes["fft_lengths"] = fft_lengths
    if fft_transforms is not None:
        changes["fft_transforms"] = fft_transforms
    new = dataclasses.replace(previous, **changes)
    _current = new
    try:
        yield new
    finally:
        _current = previous
