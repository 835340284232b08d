"""Detection: readers, every model's train/predict steps, the CLI round trip, bad annotations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import only_run_dir

from cvtool.commands import components as C
from cvtool.commands import data, evaluate, predict, train
from cvtool.config import runner
from cvtool.data.detection_sets import open_detection_set
from cvtool.data.shapes import SHAPE_CLASSES, generate_devkit
from cvtool.engine.hardware import Hardware
from cvtool.errors import CvtoolError
from cvtool.metrics.coco import model_results
from cvtool.models import list_models

CLASSES = list(SHAPE_CLASSES)
CPU = Hardware(torch.device("cpu"), None, False, False, False, False, False)
SMALL = {"num_train": 8, "num_val": 4, "image_size": 128, "min_objects": 1, "max_objects": 4, "min_size": 12,
         "max_size": 48, "seed": 0}


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return generate_devkit(tmp_path_factory.mktemp("det") / "devkit", **SMALL)


def small(devkit: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["task=detection", f"dataset.root={devkit}", "dataset.synth=null", f"paths.runs={tmp_path / 'runs'}",
            "hardware=cpu", "data.batch_size=4", "trainer.epochs=1", "logger=[]", "plots=false",
            *extra]


def test_voc_and_coco_readers_return_the_objects_the_generator_wrote(devkit):
    voc = open_detection_set("voc", root=devkit, split="val", classes=CLASSES, train=False)
    coco = open_detection_set("coco", root=None, split="val", classes=None, train=False,
                              ann_file=str(devkit / "annotations" / "instances_val.json"), image_dir=str(devkit))
    assert coco.classes == CLASSES and [str(i.image_id).zfill(6) for i in coco.items] == [i.image_id for i in voc.items]
    for a, b in zip(voc.items, coco.items):  # VOC 1-based inclusive pixels == COCO [x, y, w, h], both read to xyxy
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)  # COCO ids 1, 3, 5, 7, 9 -> labels 0..4
    image, target = voc[0]
    assert image.shape == (3, 128, 128) and target["boxes"].shape == (len(voc.items[0].labels), 4)
    assert target["image_id"] == voc.items[0].image_id


def test_coco_results_map_labels_back_to_the_files_category_ids():
    out = {"boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 5.0, 5.0]]), "scores": torch.tensor([0.9, 0.4]),
           "labels": torch.tensor([0, 2])}
    results = model_results(7, out, [1, 3, 5, 7, 9])
    assert [r["category_id"] for r in results] == [1, 5] and results[0]["bbox"] == [1.0, 2.0, 10.0, 20.0]


@pytest.mark.parametrize("name", list_models(task="detection"))
def test_every_detector_trains_two_steps_and_predicts(name, devkit):
    """Each model with its own conf/model YAML on the shapes data (masks from the COCO JSON for Mask R-CNN)."""
    overrides = ["task=detection", f"model={name}", f"dataset.root={devkit}", "dataset.synth=null"]
    cfg = runner.compose("train", [*overrides, *(["dataset=shapes_coco"] if name == "mask_rcnn" else []),
                                   *(["model.width=8"] if name == "yolo" else [])])
    task = C.task_from(cfg)
    dataset = task.open_split("val", None, skip_invalid=False, seed=0, train=True)
    model = task.build_model(C.plain(cfg.model), len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = task.preprocess(dataset.collate([dataset[0], dataset[1]]), CPU)
    model.train()
    for _ in range(2):
        loss = task.training_step(model, batch)["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        outputs = task.inference_step(model, batch)
    assert len(outputs) == 2 and all(o["boxes"].shape[-1] == 4 for o in outputs)
    assert all(((o["labels"] >= 0) & (o["labels"] < len(CLASSES))).all() for o in outputs)
    evaluator = task.build_evaluator(task.open_split("val", None, skip_invalid=False, seed=0))
    evaluator.process(batch, outputs)
    metrics = evaluator.evaluate()
    assert set(metrics) == ({"bbox", "segm"} if name == "mask_rcnn" else {"voc07", "voc10"})


def test_train_eval_predict_round_trip_on_the_cli_entry_points(devkit, tmp_path):
    result, = train.main(small(devkit, tmp_path, "model=yolo", "model.width=8", "trainer.epochs=2"))
    run = only_run_dir(tmp_path / "runs" / "detection" / "train")
    assert result["metric"] == "voc10.mAP" and result["final"]["voc10"]["mAP"] is not None
    ckpt = run / "checkpoints" / "best.pt"
    common = [f"ckpt={ckpt}", f"paths.runs={tmp_path / 'runs'}", "hardware=cpu", "plots=false"]
    direct, = evaluate.main(common)
    predict.main([*common, "overlays=2"])
    out = only_run_dir(tmp_path / "runs" / "detection" / "predict")
    assert sorted(p.name for p in (out / "results").iterdir()) == sorted(f"comp4_det_val_{c}.txt" for c in CLASSES)
    assert len(list((out / "overlays").glob("*.png"))) == 2
    stored, = evaluate.main(["task=detection", f"dataset.root={devkit}", "dataset.synth=null",
                             f"predictions={out / 'results'}", f"paths.runs={tmp_path / 'runs'}", "plots=false"])
    assert stored == direct


def _break(devkit: Path, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(devkit, root)
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    xml = [root / "Annotations" / f"{i}.xml" for i in ids]
    xml[0].write_text(xml[0].read_text().replace("<name>", "<name>hexagon", 1))
    text = xml[1].read_text()
    start = text.index("<xmax>") + len("<xmax>")
    xml[1].write_text(text[:start] + "999" + text[text.index("</xmax>"):])
    xml[2].write_text("<annotation><object>")
    (root / "JPEGImages" / f"{ids[3]}.jpg").unlink()
    return root


def test_bad_annotations_are_all_listed_and_refused_or_skipped(devkit, tmp_path):
    root = _break(devkit, tmp_path)
    with pytest.raises(CvtoolError, match="4 invalid item") as err:
        data.check(["task=detection", f"dataset.root={root}", "dataset.synth=null"])
    assert "fix or delete" in err.value.line()
    with pytest.raises(CvtoolError, match=r"invalid annotation: .*hexagon.* \(and 3 more\)"):
        train.main(small(root, tmp_path, "model=yolo", "model.width=8"))
    result, = train.main(small(root, tmp_path, "model=yolo", "model.width=8", "data.skip_invalid=true"))
    assert result["epochs"] == 1


def test_coco_shapes_train_reports_the_coco_numbers(devkit, tmp_path):
    result, = train.main(small(devkit, tmp_path, "dataset=shapes_coco", "model=yolo", "model.width=8"))
    assert result["metric"] == "bbox.AP" and set(result["final"]) == {"bbox"}
    assert json.loads((only_run_dir(tmp_path / "runs" / "detection" / "train") / "metrics.json").read_text())


def test_a_short_training_run_learns_to_detect(tmp_path_factory, tmp_path):
    """The default detector (a narrow YOLO here) on 240 shapes images: from no detections to a real mAP."""
    root = generate_devkit(tmp_path_factory.mktemp("learn") / "devkit", **{**SMALL, "num_train": 240, "num_val": 60})
    common = small(root, tmp_path, "model.width=8", "data.batch_size=16", "optim.lr=3e-3")
    untrained, = train.main([*common, "trainer.epochs=1", "optim.lr=1e-12", f"paths.runs={tmp_path / 'u'}"])
    trained, = train.main([*common, "trainer.epochs=8"])
    assert untrained["final"]["voc10"]["mAP"] < 0.02
    assert trained["best"] > 0.12 and trained["best"] > untrained["final"]["voc10"]["mAP"] + 0.1  # 0.22 measured


def test_backbone_weights_from_a_local_classifier_file(tmp_path):
    from torchvision.models import resnet50

    from cvtool.models import create_model

    torch.manual_seed(0)
    classifier = resnet50()
    torch.save(classifier.state_dict(), tmp_path / "r50.pt")
    model = create_model("faster_rcnn", num_classes=5, weights_backbone=str(tmp_path / "r50.pt"), min_size=128,
                         max_size=128)
    assert torch.equal(model.backbone.body.layer1[0].conv1.weight, classifier.layer1[0].conv1.weight)
    with pytest.raises(CvtoolError, match="no network|not found"):
        create_model("faster_rcnn", num_classes=5, weights_backbone=str(tmp_path / "missing.pt"))


def test_group_norm_for_from_scratch_resnet_fpn_detectors():
    from torch import nn

    from cvtool.models import create_model

    cfg = runner.compose("train", ["task=detection", "model=faster_rcnn"])
    assert cfg.model.norm == "gn"  # the shapes recipe trains from scratch
    model = create_model("faster_rcnn", num_classes=5, norm="gn", min_size=128, max_size=128)
    norms = [type(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.GroupNorm)]
    assert norms and set(norms) == {nn.GroupNorm}
    assert sum(isinstance(m, nn.GroupNorm) for m in model.backbone.fpn.modules()) == 8  # 4 lateral + 4 output convs
    assert all(m.num_groups == 32 for m in model.modules() if isinstance(m, nn.GroupNorm))
    with pytest.raises(CvtoolError, match="pretrained weights hold BatchNorm"):
        create_model("faster_rcnn", num_classes=5, norm="gn", weights_backbone="IMAGENET1K_V1")
    with pytest.raises(CvtoolError, match="ResNet-50-FPN"):
        create_model("ssdlite", num_classes=5, norm="gn")
    cfg = runner.compose("train", ["task=detection", "model=faster_rcnn", "dataset=coco", "dataset.root=/c"])
    assert cfg.model.norm == "auto"


def test_roi_sampling_pre_nms_and_positive_fraction_reach_the_r_cnn_heads():
    from cvtool.models import create_model

    cfg = runner.compose("train", ["task=detection", "model=mask_rcnn"])
    shapes = (cfg.model.roi_sampling_ratio, cfg.model.rpn_pre_nms_top_n_train, cfg.model.box_positive_fraction)
    assert shapes == (1, 600, 0.75)  # the shapes CPU recipe
    model = create_model("mask_rcnn", num_classes=3, min_size=128, max_size=128, roi_sampling_ratio=1,
                         rpn_pre_nms_top_n_train=600, box_positive_fraction=0.75)
    assert model.roi_heads.box_roi_pool.sampling_ratio == model.roi_heads.mask_roi_pool.sampling_ratio == 1
    assert model.rpn._pre_nms_top_n["training"] == 600
    assert model.roi_heads.fg_bg_sampler.positive_fraction == 0.75
    cfg = runner.compose("train", ["task=detection", "model=faster_rcnn", "dataset=coco", "dataset.root=/c"])
    published = (cfg.model.roi_sampling_ratio, cfg.model.rpn_pre_nms_top_n_train, cfg.model.box_positive_fraction)
    assert published == (2, 2000, 0.25)  # torchvision's
    for bad in (-1, 1.5, "two"):
        with pytest.raises(CvtoolError, match="roi_sampling_ratio must be an integer"):
            create_model("faster_rcnn", num_classes=3, roi_sampling_ratio=bad)
    with pytest.raises(CvtoolError, match="has no RoI pooling"):
        create_model("retinanet", num_classes=3, roi_sampling_ratio=1)
    for bad in (0, 1.5, "half"):
        with pytest.raises(CvtoolError, match="box_positive_fraction must be a number"):
            create_model("faster_rcnn", num_classes=3, box_positive_fraction=bad)


def test_returned_layers_and_fpn_channels_shape_the_pyramid_and_its_heads():
    from torch import nn

    from cvtool.models import create_model

    model = create_model("mask_rcnn", num_classes=3, min_size=96, max_size=96, norm="gn", returned_layers=[2, 3, 4],
                         anchor_sizes=[16, 32, 64, 128], fpn_channels=128)
    assert [b[0].in_channels for b in model.backbone.fpn.inner_blocks] == [512, 1024, 2048]
    assert sum(isinstance(m, nn.GroupNorm) for m in model.backbone.fpn.modules()) == 6  # 3 lateral + 3 output
    features = model.backbone(torch.rand(1, 3, 96, 96))
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == {
        "0": (128, 12, 12), "1": (128, 6, 6), "2": (128, 3, 3), "pool": (128, 2, 2)}  # P3-P6, 128 wide
    assert model.rpn.head.conv[0][0].in_channels == model.roi_heads.mask_head[0][0].in_channels == 128
    assert model.roi_heads.box_head.fc6.in_features == 128 * 7 * 7
    assert model.roi_heads.box_roi_pool.featmap_names == model.roi_heads.mask_roi_pool.featmap_names == ["0", "1", "2"]
    target = {"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 96, 96, dtype=torch.uint8)}
    target["masks"][0, 12:50, 10:40] = 1
    losses = model.train()([torch.rand(3, 96, 96)], [target])
    assert all(torch.isfinite(v) for v in losses.values()) and len(losses) == 5
    assert len(model.eval()([torch.rand(3, 96, 96)])[0]["boxes"]) > 0
    default = create_model("faster_rcnn", num_classes=3, returned_layers=[1, 2, 3, 4])
    assert [b[0].in_channels for b in default.backbone.fpn.inner_blocks] == [256, 512, 1024, 2048]
    with pytest.raises(CvtoolError, match="needs 4 anchor sizes"):
        create_model("faster_rcnn", num_classes=3, returned_layers=[2, 3, 4], anchor_sizes=[8, 16, 32, 64, 128])
    for bad in ([], [3, 2], [0, 1], [2, 2, 3], "234"):
        with pytest.raises(CvtoolError, match="returned_layers must be increasing"):
            create_model("faster_rcnn", num_classes=3, returned_layers=bad)
    for bad in (100, 0, 256.0, True):
        with pytest.raises(CvtoolError, match="fpn_channels must be a multiple of 32"):
            create_model("faster_rcnn", num_classes=3, fpn_channels=bad)
    for pyramid in ({"returned_layers": [2, 3, 4]}, {"fpn_channels": 128}):
        with pytest.raises(CvtoolError, match="COCO weights hold a 256-channel FPN"):
            create_model("faster_rcnn", num_classes=3, weights="COCO_V1", **pyramid)
        with pytest.raises(CvtoolError, match="ResNet-50-FPN R-CNNs"):
            create_model("retinanet", num_classes=3, **pyramid)
    with pytest.raises(CvtoolError, match="built for 256 channels"):
        create_model("faster_rcnn_v2", num_classes=3, fpn_channels=128)
    cfg = runner.compose("train", ["task=detection", "model=faster_rcnn", "dataset=voc", "dataset.root=/v"])
    assert (list(cfg.model.returned_layers), cfg.model.fpn_channels) == ([1, 2, 3, 4], 256)  # torchvision's


def test_loss_weights_scale_the_trained_sum_and_name_the_models_losses(devkit, tmp_path):
    cfg = runner.compose("train", ["task=detection", "model=faster_rcnn", f"dataset.root={devkit}",
                                   "dataset.synth=null"])
    assert C.plain(cfg.task)["loss_weights"] == {"loss_classifier": 2.0}  # the shapes CPU recipe
    for other in (["model=yolo"], ["model=faster_rcnn", "dataset=coco", "dataset.root=/c"]):
        assert C.plain(runner.compose("train", ["task=detection", *other]).task)["loss_weights"] == {}
    task = C.task_from(cfg)
    dataset = task.open_split("val", None, skip_invalid=False, seed=0, train=True)
    model = task.build_model(C.plain(cfg.model), len(CLASSES)).train()
    out = task.training_step(model, task.preprocess(dataset.collate([dataset[0], dataset[1]]), CPU))
    parts = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
    assert out["loss"].item() == pytest.approx(sum(out[k].item() for k in parts) + out["loss_classifier"].item())
    with pytest.raises(CvtoolError, match="unknown loss 'loss_classifier'") as err:  # Faster R-CNN's, not YOLO's
        train.main(small(devkit, tmp_path, "model=yolo", "model.width=8", "task.loss_weights={loss_classifier:2}"))
    assert "task.loss_weights" in err.value.line() and "loss_xy, loss_wh, loss_obj, loss_cls" in err.value.line()
    with pytest.raises(CvtoolError, match="weight of loss_obj must be a number >= 0, got -1"):
        train.main(small(devkit, tmp_path, "model=yolo", "model.width=8", "task.loss_weights={loss_obj:-1}"))


def test_aspect_ratio_grouping_makes_batches_of_one_group():
    from cvtool.data.samplers import grouped

    groups = [0, 1, 0, 1, 1, 0, 0, 1, 0]
    order = grouped([0, 1, 2, 3, 4, 5, 6, 7, 8], groups, 2)
    assert sorted(order) == list(range(9))  # a permutation: every image once
    batches = [order[i:i + 2] for i in range(0, 8, 2)]  # the complete batches come first
    assert batches == [[0, 2], [1, 3], [5, 6], [4, 7]] and all(len({groups[i] for i in b}) == 1 for b in batches)
