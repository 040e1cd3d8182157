"""All node implementations, by ComfyUI class name."""

from . import nodes_core, nodes_media  # noqa: F401  (importing registers the nodes)
from .nodes_core import REGISTRY

__all__ = ["REGISTRY"]
