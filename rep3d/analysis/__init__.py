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
)
from rep3d.analysis.figures import save_convergence_png, save_curves_png, save_erf_png, save_masks_png
from rep3d.analysis.masks import mask_report, ratio_by_ring

__all__ = [
    "AREA_THRESHOLDS",
    "ERFResult",
    "MASS_RADII",
    "TARGETS",
    "TEACHER_ENVELOPES",
    "VARIANTS",
    "effective_receptive_field",
    "erf_summary",
    "high_contribution_area_ratios",
    "kernel_convergence",
    "mask_report",
    "mass_within_radii",
    "msd_crops",
    "radial_profile",
    "random_inputs",
    "ratio_by_ring",
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
