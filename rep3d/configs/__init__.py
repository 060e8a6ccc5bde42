"""Configs as data: the schema a model folder's ``config.json`` is read through, and the model constructor's argument
schema the models check themselves against.

* :mod:`rep3d.configs.model_args`: constructor arguments (names, types, bounds) and timm's factory options;
* :mod:`rep3d.configs.cfg`: the typed, frozen config classes (:class:`ModelCfg`, :class:`InputCfg`,
  :class:`LabelCfg`, :class:`Provenance`) with versioned ``to_dict`` / ``from_dict``;
* :mod:`rep3d.configs.folder`: reading an untrusted ``config.json`` (size and depth caps, control characters, the
  old timm-style layout) into those classes, and the layout ``save_pretrained`` writes;
* :mod:`rep3d.configs.pretrained`: :class:`PretrainedCfg`, the typed view of a built model's ``pretrained_cfg`` dict
  that the rest of rep3d reads instead of string keys, and the helpers that make a changed copy of a cfg;
* :mod:`rep3d.configs.keys`: the key groups of a cfg (input, provenance, weight source, timm's keys), each written
  once.

This package sits above :mod:`rep3d.layers` and below :mod:`rep3d.hub`: it reads no files it is not handed and builds
no model.
"""

from rep3d.configs.model_args import FACTORY_KEYS, accepted_args, check_model_args
from rep3d.configs.pretrained import PretrainedCfg, WeightSource

__all__ = ["FACTORY_KEYS", "PretrainedCfg", "WeightSource", "accepted_args", "check_model_args"]
