"""All node implementations, by ComfyUI class name (importing a module registers its nodes)."""

from . import nodes_core, nodes_media
from .nodes_core import REGISTRY

MODULES = (nodes_core, nodes_media)

__all__ = ["REGISTRY", "MODULES"]
