"""miva: few-shot, modular image-to-video adapters for the stock diffusers AnimateDiff stack."""

__version__ = "0.1.0"

# Heavy modules (diffusers pipelines) are imported lazily so `import miva` stays cheap.
_LAZY = {
    "MIVAPipeline": "miva.pipelines.pipeline_miva",
    "MIVAPipelineOutput": "miva.pipelines.pipeline_miva",
    "MIVAAdapterConfig": "miva.attention_processors.adapter_config",
    "MIVAWanPipeline": "miva.pipelines.pipeline_miva_wan",
    "WanAdapterConfig": "miva.backbones.wan.config",
    "load_config": "miva.config",
    "load_base": "miva.loaders.base_models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'miva' has no attribute {name!r}")
