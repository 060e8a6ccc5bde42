"""The key groups of a model's ``pretrained_cfg`` dict and of a model folder's ``config.json``, each written once.

A model carries its configuration as timm's ``pretrained_cfg`` dict (timm's keys plus rep3d's 3-D keys), so that
``timm.create_model`` and timm's tools keep working. Code outside :mod:`rep3d.configs` does not index that dict by
string: it reads it through :class:`rep3d.configs.pretrained.PretrainedCfg` and filters it with the groups below.
"""

from __future__ import annotations

import dataclasses

from timm.models import PretrainedCfg as TimmPretrainedCfg

TIMM_CFG_KEYS = frozenset(f.name for f in dataclasses.fields(TimmPretrainedCfg))
"""Keys timm's ``PretrainedCfg`` knows; every other cfg key is rep3d's 3-D metadata or weight-source bookkeeping."""

INPUT_KEYS = ("roi_size", "spacing", "intensity_window", "orientation", "modality", "training_distribution")
"""The input description (:class:`rep3d.configs.cfg.InputCfg` without ``in_chans``)."""
TUPLE_KEYS = ("roi_size", "spacing", "intensity_window")
"""Input keys whose value is a fixed-length tuple (JSON gives lists)."""
LABEL_NAME_KEYS = ("class_names", "label_names")
"""Two spellings of the class names: rep3d's ``class_names`` and timm's ``label_names``."""
PROVENANCE_KEYS = ("synthetic", "dataset", "description", "origin", "license")
"""Where the weights come from (:class:`rep3d.configs.cfg.Provenance` without ``source`` / ``tag``)."""
WEIGHT_CLAIM_KEYS = ("class_names", "label_names", "label_descriptions", "dataset", "synthetic", "metrics",
                     "description", "origin", "command", "training")
"""Keys that describe trained weights (what they were trained on, how well they do): a model carries them only
when those weights were loaded into it."""

WEIGHT_SOURCE_KEYS = ("file", "url", "hf_hub_id", "bundled")
"""Keys that each name a weight file: an overlay naming one replaces the registered source."""
SOURCE_BOUND_KEYS = ("bundled", "sha256", "hf_revision", "hf_hub_filename")
"""Keys that describe one registered weight file: dropped with the source they describe."""
SOURCE_KEYS = frozenset({"file", "url", "hf_hub_id", "hf_hub_filename", "hf_revision", "bundled", "sha256", "source",
                         "state_dict", "weights_source", "tag", "architecture", "custom_load", "classifier"})
"""Keys that say where weights are or how to load them: a folder's metadata never sets them."""
SAVED_SOURCE_KEYS = ("bundled", "sha256", "hf_revision", "weights_source")
"""rep3d's source bookkeeping: not written into a saved folder's metadata (the folder is its own source)."""
UNSAVED_TIMM_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag", "label_names",
                     "label_descriptions")
"""timm keys not written into a saved folder's ``pretrained_cfg`` (a source, or labels kept elsewhere)."""
KEPT_TIMM_KEYS = ("input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
                  "license", "description", "paper_name", "paper_ids", "notes")
"""timm ``pretrained_cfg`` keys read from a folder: descriptions only. A source (``file``, ``url``, ``hf_hub_id``,
``state_dict``, ...) or ``custom_load`` / ``classifier`` from a folder is ignored."""
INFO_TIMM_KEYS = ("license", "paper_ids", "paper_name")
"""timm keys ``rep3d.model_info`` shows beside the 3-D metadata."""
SAVED_TIMM_METADATA = ("license", "description")
"""Metadata given to ``save_pretrained`` that is saved among timm's keys (``pretrained_cfg``), not in
``rep3d.metadata``."""
MODEL_ARG_KEYS = ("in_chans", "num_classes")
"""Constructor arguments a built model exposes as attributes (recorded in ``model.model_args`` from the model)."""

CFG_KEYS = frozenset(TIMM_CFG_KEYS | set(INPUT_KEYS) | set(LABEL_NAME_KEYS) | set(PROVENANCE_KEYS)
                     | set(WEIGHT_CLAIM_KEYS) | SOURCE_KEYS | {
                         "tta_flip_axes", "axis_order", "normalization", "metrics", "command", "training",
                         "label_descriptions", "in_chans"})
"""Every key a ``pretrained_cfg`` dict may hold (what :class:`rep3d.configs.pretrained.PretrainedCfg` reads)."""
