"""Draw the example masks (run from the repository root: `python examples/masks/make_masks.py`).

`left_half.png`: 64x64 (the size of examples/images/motionworld.png), white on the left half (columns 0-31: the
adapter acts there), black on the right half. A 1-bit PNG, so the file stays tiny.
"""

from pathlib import Path

from PIL import Image

SIZE = 64


def left_half(size: int = SIZE) -> Image.Image:
    mask = Image.new("1", (size, size), 0)
    mask.paste(1, (0, 0, size // 2, size))
    return mask


if __name__ == "__main__":
    left_half().save(Path(__file__).with_name("left_half.png"), optimize=True)
