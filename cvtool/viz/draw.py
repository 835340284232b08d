"""Drawing predictions on images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw


def labelled(path: str | Path, text: str, min_side: int = 256) -> Image.Image:
    """The image (upscaled to at least `min_side` px for legibility) with `text` on a dark banner."""
    image = Image.open(path).convert("RGB")
    scale = max(1.0, min_side / min(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((4, 4), text)
    draw.rectangle((0, 0, box[2] + 4, box[3] + 4), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255))
    return image
