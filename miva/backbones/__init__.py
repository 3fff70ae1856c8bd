"""What differs per base model: one description per backbone (which layers are self / cross / temporal attention,
which hooks give frames, level sizes and the time embedding, how tokens are laid out), plus the maths that is
genuinely new to that backbone (`miva.backbones.wan` for the Wan2.1 video DiT)."""
