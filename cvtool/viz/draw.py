"""Drawing predictions on images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw


def labelled(path: str | Path | Image.Image, text: str, min_side: int = 256) -> Image.Image:
    """The image (a file or a PIL image; upscaled to at least `min_side` px for legibility) with `text` on a dark
    banner."""
    image = (path if isinstance(path, Image.Image) else Image.open(path)).convert("RGB")
    scale = max(1.0, min_side / min(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((4, 4), text)
    draw.rectangle((0, 0, box[2] + 4, box[3] + 4), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255))
    return image


def boxes_overlay(image, boxes, labels: list[str], masks=None, min_side: int = 256) -> Image.Image:
    """A uint8 C×H×W image tensor with its boxes, "class score" labels and (optional) instance masks drawn,
    upscaled to at least `min_side` px so small images stay legible."""
    import torch
    from torchvision.transforms.v2.functional import resize, to_pil_image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    scale = max(1.0, min_side / min(image.shape[-2:]))
    if scale > 1:
        size = [round(image.shape[-2] * scale), round(image.shape[-1] * scale)]
        image = resize(image, size, antialias=False)
        boxes = boxes * scale
        if masks is not None:
            masks = resize(masks, size, antialias=False)
    if masks is not None and len(masks):
        image = draw_segmentation_masks(image, masks.bool(), alpha=0.45)
    if len(boxes):
        image = draw_bounding_boxes(image, torch.as_tensor(boxes).reshape(-1, 4), labels, colors="yellow", width=2)
    return to_pil_image(image)


def class_overlay(image, labels, skip: tuple[int, ...] = (0,), alpha: float = 0.5, min_side: int = 256) -> Image.Image:
    """A uint8 C×H×W image with its (H, W) class-index map painted over in VOC palette colours (classes in `skip`,
    e.g. background, left unpainted), upscaled to at least `min_side` px."""
    import torch
    from torchvision.transforms.v2.functional import resize, to_pil_image
    from torchvision.utils import draw_segmentation_masks

    from cvtool.data.index_png import VOC_PALETTE

    labels = torch.as_tensor(labels)
    scale = max(1.0, min_side / min(image.shape[-2:]))
    if scale > 1:
        size = [round(image.shape[-2] * scale), round(image.shape[-1] * scale)]
        image, labels = resize(image, size, antialias=False), resize(labels[None], size, antialias=False)[0]
    classes = [int(k) for k in labels.unique() if int(k) not in skip]
    if classes:
        masks = torch.stack([labels == k for k in classes])
        colours = [tuple(VOC_PALETTE[3 * k:3 * k + 3]) for k in classes]
        image = draw_segmentation_masks(image, masks, alpha=alpha, colors=colours)
    return to_pil_image(image)
