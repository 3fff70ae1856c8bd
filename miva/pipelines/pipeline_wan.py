"""Shim for diffusers' `custom_pipeline` loading of `MIVAWanPipeline`: exposes exactly one non-diffusers
`DiffusionPipeline` subclass.

    DiffusionPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", custom_pipeline="<path to this file>",
                                      trust_remote_code=True)  # -> MIVAWanPipeline

diffusers copies this file into its modules cache and imports it, so `miva` must be installed where it runs. Its
basename differs from the UNet shim's (`pipeline.py`): two custom files with one basename collide in one process.
"""

from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline

__all__ = ["MIVAWanPipeline"]
