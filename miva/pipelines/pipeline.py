"""Shim for diffusers' `custom_pipeline` loading: exposes exactly one non-diffusers `DiffusionPipeline` subclass.

    DiffusionPipeline.from_pretrained(model_dir, custom_pipeline="<folder containing this file>",
                                      trust_remote_code=True)  # -> MIVAPipeline

diffusers copies this file into its modules cache and imports it, so `miva` must be installed where it runs. Copy it
into a Hub repo as `pipeline.py` for `custom_pipeline="<user>/<repo>"`.
"""

from miva.pipelines.pipeline_miva import MIVAPipeline

__all__ = ["MIVAPipeline"]
