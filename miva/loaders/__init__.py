"""Adapter lifecycle on a pipeline, and adapter files (native, Hub, research checkpoints)."""

from .loader_mixin import MIVALoaderMixin

__all__ = ["MIVALoaderMixin"]
