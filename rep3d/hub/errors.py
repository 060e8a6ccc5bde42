"""Re-export of :class:`rep3d.errors.Rep3DWeightsError` for code that imports it from ``rep3d.hub``."""

from rep3d.errors import Rep3DWeightsError

__all__ = ["Rep3DWeightsError"]
