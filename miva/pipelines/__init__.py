"""Image-to-video sampling: `MIVAPipeline`, its output, CA-map images, and the pure latent-init functions.

`MIVAPipeline` pulls in diffusers, so it is imported lazily: `miva.pipelines.latent_init` stays cheap to import.
"""

_LAZY = {
    "MIVAPipeline": "miva.pipelines.pipeline_miva",
    "MIVAPipelineOutput": "miva.pipelines.pipeline_miva",
    "CAMapStore": "miva.pipelines.ca_maps",
    "save_ca_maps": "miva.pipelines.ca_maps",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'miva.pipelines' has no attribute {name!r}")
