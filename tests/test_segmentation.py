"""Segmentation pipeline: mask reading and checks, joint transforms, tiled/TTA inference, the CLI round trip and a
short training run that learns."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import only_run_dir
from PIL import Image
from torchvision import tv_tensors

from cvtool.commands import data, evaluate, predict, train
from cvtool.data.index_png import read_index_png, write_index_png
from cvtool.data.segmentation_sets import random_scale_crop
from cvtool.data.shapes import generate_devkit
from cvtool.errors import CvtoolError
from cvtool.tasks.dense_inference import dense_scores, tiled_logits

SMALL = {"num_train": 8, "num_val": 4, "image_size": 128, "min_objects": 1, "max_objects": 4, "min_size": 12,
         "max_size": 48, "seed": 0}


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return generate_devkit(tmp_path_factory.mktemp("seg") / "devkit", **SMALL)


UNET = ("model=unet", "model.width=8", "model.depth=2")  # a tiny U-Net: fast pipeline tests


def small(devkit: Path, tmp_path: Path, *extra: str, model: tuple[str, ...] = UNET) -> list[str]:
    return ["task=segmentation", f"dataset.root={devkit}", "dataset.synth=null", f"paths.runs={tmp_path / 'runs'}",
            "hardware=cpu", "data.batch_size=4", "trainer.epochs=1", "logger=[]", "plots=false",
            *model, *extra]


def test_palette_png_round_trip_keeps_indices_and_palette(tmp_path):
    values = np.random.default_rng(0).integers(0, 21, (37, 53)).astype(np.uint8)
    values[0, :5] = 255
    path = write_index_png(tmp_path / "m.png", values)
    assert np.array_equal(read_index_png(path), values)
    with Image.open(path) as image:
        assert image.mode == "P" and image.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1


def test_random_scale_crop_pads_masks_with_void_and_never_interpolates_them():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 3, (60, 80)))
    transform = random_scale_crop(128, 40, 120, ignore_index=255)
    for _ in range(10):
        out_image, out_mask = transform(image, mask)
        assert out_image.shape[-2:] == out_mask.shape == (128, 128)
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 255}
    out_image, out_mask = random_scale_crop(128, 40, 41)(image, mask)  # shorter side 40: mostly padding
    assert (out_mask == 255).float().mean() > 0.5 and (out_image[:, out_mask == 255] == 0).all()


class Pointwise(torch.nn.Module):
    """A 1x1 conv: its logits at a pixel depend on that pixel only, so tiling and flips must not change them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_tiled_and_flipped_inference_equals_whole_image_inference():
    model, images = Pointwise(), torch.randn(2, 3, 97, 131)
    whole = model(images)
    assert torch.allclose(tiled_logits(model, images, tile=48, overlap=0.25), whole, atol=1e-6)
    assert torch.allclose(tiled_logits(model, images, tile=160, overlap=0.5), whole, atol=1e-6)  # smaller image
    tta = dense_scores(model, images, flip=True)
    assert torch.allclose(tta, whole.softmax(1), atol=1e-6)
    assert dense_scores(model, images, scales=[0.5, 1.0], tile=64).shape == (2, 4, 97, 131)


def _break(devkit: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "broken"
    shutil.copytree(devkit, root)
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    masks = [root / "SegmentationClass" / f"{i}.png" for i in ids]
    Image.open(masks[0]).convert("RGB").save(masks[0])  # colour mask
    write_index_png(masks[1], np.zeros((100, 128), np.uint8))  # wrong size
    bad = read_index_png(masks[2]).copy()
    bad[0, 0] = 9
    write_index_png(masks[2], bad)  # value 9 with 6 classes
    masks[3].unlink()
    return root, masks


def test_bad_masks_are_all_listed_named_and_refused_or_skipped(devkit, tmp_path):
    root, masks = _break(devkit, tmp_path)
    with pytest.raises(CvtoolError, match="4 invalid item") as err:
        data.check(["task=segmentation", f"dataset.root={root}", "dataset.synth=null"])
    assert "fix or delete" in err.value.line()
    with pytest.raises(CvtoolError, match=rf"invalid mask: RGB .*{masks[0].name}.*convert.* \(and 3 more\)"):
        train.main(small(root, tmp_path))
    result, = train.main(small(root, tmp_path, "data.skip_invalid=true"))
    assert result["epochs"] == 1


def test_bad_mask_messages_name_the_file_and_the_problem(devkit, tmp_path):
    from cvtool.data.segmentation_sets import open_segmentation_set, voc_seg_items

    root, masks = _break(devkit, tmp_path)
    problems: list[str] = []
    classes = ["background", "circle", "square", "triangle", "star", "cross"]
    open_segmentation_set(voc_seg_items(root, "train"), classes, "x", num_classes=6, ignore_index=255,
                          problems=problems)
    text = "\n".join(problems)
    assert "RGB image where a class-index mask is expected" in text and "convert" in text
    assert "mask is 128x100 but its image is 128x128" in text
    assert f"mask values 9 outside [0, 6) ∪ {{255}} ({masks[2]})" in text and f"mask file missing ({masks[3]})" in text


def test_train_eval_predict_round_trip_on_the_cli_entry_points(devkit, tmp_path):
    result, = train.main(small(devkit, tmp_path, "trainer.epochs=2"))
    assert result["metric"] == "mIoU" and set(result["final"]) >= {"mIoU", "pixel_acc", "mean_class_acc", "fwIoU",
                                                                    "per_class_iou"}
    ckpt = only_run_dir(tmp_path / "runs" / "segmentation" / "train") / "checkpoints" / "best.pt"
    common = [f"ckpt={ckpt}", f"paths.runs={tmp_path / 'runs'}", "hardware=cpu", "plots=false"]
    direct, = evaluate.main(common)
    predict.main([*common, "overlays=2"])
    out = only_run_dir(tmp_path / "runs" / "segmentation" / "predict")
    val = (devkit / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(val)
    assert read_index_png(out / "masks" / f"{val[0]}.png").shape == (128, 128)
    assert len(list((out / "overlays").glob("*.png"))) == 2
    stored, = evaluate.main(["task=segmentation", f"dataset.root={devkit}", "dataset.synth=null",
                             f"predictions={out / 'masks'}", f"paths.runs={tmp_path / 'runs'}", "plots=false"])
    assert stored == direct
    tta, = evaluate.main([*common, "task.tta_flip=true", "task.tile=96"])
    assert tta["mIoU"] is not None


def test_predict_on_a_folder_of_plain_images_writes_masks_of_their_size(devkit, tmp_path):
    train.main(small(devkit, tmp_path))
    ckpt = only_run_dir(tmp_path / "runs" / "segmentation" / "train") / "checkpoints" / "last.pt"
    source = tmp_path / "photos"
    source.mkdir()
    Image.new("RGB", (97, 131), (120, 30, 200)).save(source / "odd.png")
    predict.main([f"ckpt={ckpt}", f"source={source}", f"paths.runs={tmp_path / 'runs'}", "hardware=cpu"])
    out = only_run_dir(tmp_path / "runs" / "segmentation" / "predict")
    assert read_index_png(out / "masks" / "odd.png").shape == (131, 97)


def test_a_short_training_run_learns_to_segment(tmp_path_factory, tmp_path):
    """The default FCN-8s (narrow) on 240 shapes images: from chance to a real mIoU."""
    root = generate_devkit(tmp_path_factory.mktemp("learn") / "devkit", **{**SMALL, "num_train": 240, "num_val": 40})
    common = small(root, tmp_path, "data.batch_size=8", "optim.lr=3e-3", "sched.warmup_epochs=0.2",
                   "trainer.val_every=20", model=("model=fcn8s", "model.width=8", "model.fc_width=64"))
    untrained, = train.main([*common, "trainer.epochs=1", "optim.lr=1e-12", f"paths.runs={tmp_path / 'u'}"])
    trained, = train.main([*common, "trainer.epochs=20"])
    assert untrained["final"]["mIoU"] < 0.2
    # all-background predictions score ~0.15 (background IoU / 6 classes): above 0.2 the shapes are being found
    assert trained["best"] > 0.2 and trained["best"] > untrained["final"]["mIoU"] + 0.15  # 0.255 measured


def test_uncached_items_read_the_same_masks_as_cached_ones(devkit):
    from cvtool.data.segmentation_sets import open_segmentation_set, voc_seg_items

    classes = ["background", "circle", "square", "triangle", "star", "cross"]
    kept, read = (open_segmentation_set(voc_seg_items(devkit, "val"), classes, "x", num_classes=6, ignore_index=255,
                                        keep_masks=keep) for keep in (True, False))
    assert read.masks is None and len(read) == len(kept) == 4
    for (image_a, mask_a), (image_b, mask_b) in zip(kept, read):
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b) and mask_a.dtype == torch.int64


def test_soft_dice_loss_by_hand_ignores_void_and_weighs_classes_equally():
    from cvtool.tasks.segmentation import soft_dice_loss

    mask = torch.tensor([[[0, 0, 1, 255]]])  # 1 x 1 x 4: three labelled pixels and a void one
    confident = torch.tensor([[[9.0, 9.0, -9.0, -9.0]], [[-9.0, -9.0, 9.0, 9.0]]])[None] * 10  # 1 x 2 x 1 x 4
    assert float(soft_dice_loss(confident, mask, 255)) == pytest.approx(0.0, abs=1e-6)  # void pixel not counted
    uniform = torch.zeros(1, 2, 1, 4)  # p = 0.5 everywhere: class 0 overlap 1, class 1 overlap 0.5
    dice0 = (2 * 1.0 + 1) / (1.5 + 2 + 1)
    dice1 = (2 * 0.5 + 1) / (1.5 + 1 + 1)
    assert float(soft_dice_loss(uniform, mask, 255)) == pytest.approx(1 - (dice0 + dice1) / 2, abs=1e-6)
