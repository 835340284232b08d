"""Drawing people's skeletons: a colour per limb (left warm, right cool, the rest neutral), joints as discs."""

from __future__ import annotations

import re

from PIL import Image, ImageDraw

WARM = [(255, 64, 32), (255, 144, 0), (230, 32, 120), (255, 208, 0), (200, 80, 40), (255, 110, 90)]
COOL = [(0, 112, 255), (0, 200, 230), (96, 64, 255), (0, 150, 170), (60, 150, 255), (130, 110, 230)]
NEUTRAL = [(40, 220, 80), (220, 220, 220), (150, 230, 40), (40, 190, 160), (180, 255, 150), (160, 160, 160)]


def side(name: str) -> str:
    """'left', 'right' or '' from a keypoint name: `left`/`right` anywhere, or `l`/`r` as a word (l_wrist, wrist_r)."""
    lowered = name.lower()
    words = re.split(r"[^a-z0-9]+", lowered)
    for word in ("left", "right"):
        if word in lowered or word[0] in words:
            return word
    return ""


def limb_colours(skeleton: list, names: list[str]) -> list[tuple[int, int, int]]:
    """A colour per limb: warm for limbs on the left side, cool on the right, neutral for the rest (a limb with
    one left and one unsided end is left; one left and one right end is neutral)."""
    counters = {"left": 0, "right": 0, "": 0}
    palettes = {"left": WARM, "right": COOL, "": NEUTRAL}
    colours = []
    for a, b in skeleton:
        sides = {side(names[a]), side(names[b])} - {""}
        which = sides.pop() if len(sides) == 1 else ""
        palette = palettes[which]
        colours.append(palette[counters[which] % len(palette)])
        counters[which] += 1
    return colours


def joint_colour(name: str) -> tuple[int, int, int]:
    return {"left": WARM[0], "right": COOL[0]}.get(side(name), NEUTRAL[1])


def skeleton_overlay(image, keypoints, skeleton: list, names: list[str], scores=None, min_score: float = 0.0,
                     boxes=None, labels: list[str] | None = None, min_side: int = 256) -> Image.Image:
    """A uint8 (C, H, W) image with people's (N, K, 3) keypoints drawn: limbs (0-based `skeleton` pairs) as lines
    of their `limb_colours`, joints as discs, each joint's score as small text when (N, K) `scores` are given;
    only joints scoring at least `min_score` (without scores: v > 0, ground truth) and limbs between two of them.
    Optional XYXY `boxes` with `labels`. Upscaled to at least `min_side` px, as `boxes_overlay`."""
    from torchvision.transforms.v2.functional import to_pil_image

    picture = to_pil_image(image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)).convert("RGB")
    scale = max(1.0, min_side / min(picture.size))
    if scale > 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    if boxes is not None:
        for n, box in enumerate(boxes):
            x0, y0, x1, y1 = (float(v) * scale for v in box)
            draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 0), width=2)
            if labels:
                draw.text((x0 + 2, y0 + 1), labels[n], fill=(255, 255, 0))
    colours = limb_colours(skeleton, names)
    width = max(2, round(scale * 1.5))
    for n, person in enumerate(keypoints):
        points = [(float(x) * scale, float(y) * scale) for x, y, _ in person]
        shown = [bool(float(s) >= min_score) for s in scores[n]] if scores is not None else \
            [bool(float(v) > 0) for _, _, v in person]
        for (a, b), colour in zip(skeleton, colours):
            if shown[a] and shown[b]:
                draw.line((points[a], points[b]), fill=colour, width=width)
        for k, (x, y) in enumerate(points):
            if shown[k]:
                r = width + 1
                draw.ellipse((x - r, y - r, x + r, y + r), fill=joint_colour(names[k]), outline=(0, 0, 0))
                if scores is not None:
                    draw.text((x + r + 1, y - r - 1), f"{float(scores[n][k]):.2f}", fill=(255, 255, 255))
    return picture
