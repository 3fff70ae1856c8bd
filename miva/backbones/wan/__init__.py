"""miva on diffusers' Wan2.1 video DiT (`WanTransformer3DModel`): adapter modules, install, official-checkpoint import,
tiny components. See docs/wan.md."""
