"""The model builder: ``create_model``, ``list_models`` and ``model_info`` (parse a name, build, resolve and load weights).

Consumers (inference, training, data, CLI) import the builder from here, never from ``rep3d.models.registry``.
"""

from rep3d.models.registry import create_model, list_models, model_info

__all__ = ["create_model", "list_models", "model_info"]
