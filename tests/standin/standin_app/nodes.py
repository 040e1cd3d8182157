"""All node implementations, by ComfyUI class name."""

from . import nodes_core  # noqa: F401  (registers the core nodes)
from .nodes_core import REGISTRY

__all__ = ["REGISTRY"]
