"""Analysis instruments: effective receptive fields, learned masks against their prior, and teacher-kernel
convergence / stability experiments (a consumer layer, like :mod:`rep3d.inference`)."""

from rep3d.analysis.convergence import (
    TEACHER_ENVELOPES,
    VARIANTS,
    kernel_convergence,
    ring_errors,
    set_effective_kernel,
    stability_sweep,
    student_layer,
    summarise_stability,
    teacher_kernel,
)
from rep3d.analysis.erf import (
    AREA_THRESHOLDS,
    DEFINITIONS,
    MASS_RADII,
    TARGETS,
    ERFResult,
    effective_receptive_field,
    erf_summary,
    high_contribution_area_ratios,
    mass_within_radii,
    msd_crops,
    radial_profile,
    random_inputs,
    replknet_area_ratios,
)
from rep3d.analysis.figures import save_convergence_png, save_curves_png, save_erf_png, save_masks_png
from rep3d.analysis.masks import live_taps, mask_report, ratio_by_ring

__all__ = [
    "AREA_THRESHOLDS",
    "DEFINITIONS",
    "ERFResult",
    "MASS_RADII",
    "TARGETS",
    "TEACHER_ENVELOPES",
    "VARIANTS",
    "effective_receptive_field",
    "erf_summary",
    "high_contribution_area_ratios",
    "kernel_convergence",
    "live_taps",
    "mask_report",
    "mass_within_radii",
    "msd_crops",
    "radial_profile",
    "random_inputs",
    "ratio_by_ring",
    "replknet_area_ratios",
    "ring_errors",
    "save_convergence_png",
    "save_curves_png",
    "save_erf_png",
    "save_masks_png",
    "set_effective_kernel",
    "stability_sweep",
    "student_layer",
    "summarise_stability",
    "teacher_kernel",
]
