"""Class imbalance and batch mixing: the balanced sampler, class weights, focal loss, MixUp/CutMix, and their effect
on the minority class of a deliberately imbalanced split."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import only_run_dir, read_json
from PIL import Image
from typer.testing import CliRunner

from cvtool.commands import components as C
from cvtool.commands import train
from cvtool.config import runner
from cvtool.data.samplers import ResumableSampler, class_balanced_weights
from cvtool.errors import CvtoolError
from cvtool.tasks.losses import balanced_weights, class_weights, focal_loss, median_frequency_weights

MAJORITY, MINORITY, VAL = 60, 3, 30  # training images of the majority digits / of digit 3; validation per digit
MIXING = ("dataset.batch_transforms=[{_target_: torchvision.transforms.v2.RandomChoice, transforms: ["
          "{_target_: torchvision.transforms.v2.MixUp, alpha: 0.2}, {_target_: torchvision.transforms.v2.CutMix}]}]")


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """An ImageFolder of real handwritten digits 0-4 (scikit-learn's, 32x32 PNGs) whose training split holds 60
    images of each digit but 3 of digit 3 (1.2 % of the split); the validation split is balanced (30 each)."""
    from sklearn.datasets import load_digits

    digits, root = load_digits(), tmp_path_factory.mktemp("imbalanced")
    for label in range(5):
        images = digits.images[digits.target == label]
        kept = MINORITY if label == 3 else MAJORITY
        for split, part in (("train", images[:kept]), ("val", images[MAJORITY:MAJORITY + VAL])):
            (root / split / str(label)).mkdir(parents=True)
            for i, image in enumerate(part):
                pixels = Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
                pixels.save(root / split / str(label) / f"{i}.png")
    return root


def digits_run(root: Path, runs: Path, *extra: str) -> list[str]:
    """LeNet-5 for 4 epochs on the folder, validated after the last, without augmentation (a few seconds)."""
    return ["experiment=lenet5_digits", "dataset.kind=imagefolder", f"dataset.root={root}", "dataset.split=val",
            "dataset.cache=true", "dataset.train_transforms=[]", "dataset.eval_transforms=[]", "hardware=cpu",
            "trainer.epochs=4", "trainer.val_every=4", "data.batch_size=32", f"paths.runs={runs}", "plots=false",
            "seed=0", "deterministic=true", *extra]


def minority_accuracy(runs: Path) -> float:
    metrics = read_json(only_run_dir(runs / "classification" / "train") / "metrics.json")
    return metrics["final"]["per_class_acc"][3]


def test_the_balanced_sampler_raises_the_minority_class_accuracy_on_an_imbalanced_split(digits_folder, tmp_path):
    accuracy = {}
    for option in ("data.sampler=null", "data.sampler=balanced"):
        runs = tmp_path / option.replace("=", "_")
        train.main(digits_run(digits_folder, runs, option))
        accuracy[option] = minority_accuracy(runs)
    # measured (seeds 0/1/2): plain 0.00/0.00/0.00, balanced 0.90/0.83/0.90 (class weights: 0.83/0.97/0.77)
    assert accuracy["data.sampler=null"] <= 0.2
    assert accuracy["data.sampler=balanced"] >= accuracy["data.sampler=null"] + 0.4


def test_class_weights_auto_come_from_the_training_labels(digits_folder):
    cfg = runner.compose("train", digits_run(digits_folder, Path("runs"), "task.class_weights=auto"))
    task = C.task_from(cfg)
    C.train_val_sets(cfg, task)
    n = 4 * MAJORITY + MINORITY  # n / (5 classes x count)
    majority, minority = n / (5 * MAJORITY), n / (5 * MINORITY)
    assert task.class_weight.tolist() == pytest.approx([majority] * 3 + [minority, majority])
    logits, target = torch.randn(4, 5), torch.tensor([0, 3, 3, 4])
    assert torch.equal(task.loss(logits, target), F.cross_entropy(logits, target, weight=task.class_weight))


def test_mixup_cutmix_and_focal_loss_train_from_the_command_line(digits_folder, tmp_path):
    result, = train.main(digits_run(digits_folder, tmp_path, MIXING, "task.loss=focal", "trainer.epochs=1"))
    assert result["epochs"] == 1 and 0.0 <= result["final"]["top1"] <= 1.0


def test_batch_transforms_mix_training_batches_only(digits_folder):
    cfg = runner.compose("train", digits_run(digits_folder, Path("runs"), MIXING))
    hardware = C.setup(cfg)
    train_set, val_set = C.train_val_sets(cfg, C.task_from(cfg))
    images, labels = next(iter(C.loader(train_set, cfg, hardware, train=True)))
    assert images.dtype == torch.float32 and labels.shape == (32, 5)  # num_classes filled in from the dataset
    assert torch.allclose(labels.sum(dim=1), torch.ones(32)) and (labels.max(dim=1).values < 1).any()
    images, labels = next(iter(C.loader(val_set, cfg, hardware, train=False)))
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and labels.shape == (32,)


def test_balanced_sampler_draws_every_class_equally_often():
    labels = [0] * 900 + [1] * 90 + [2] * 10
    sampler = ResumableSampler(labels, num_replicas=1, rank=0, shuffle=True, seed=3,
                               weights=class_balanced_weights(labels))
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        counts = Counter(labels[i] for i in orders[-1])
        assert len(orders[-1]) == len(labels) and all(280 <= counts[c] <= 390 for c in range(3)), counts
    assert orders[0] != orders[1]  # a new draw each epoch
    sampler.set_epoch(0)
    assert list(sampler) == orders[0]  # ... and the same one again for the same epoch


def test_balanced_sampler_resumes_mid_epoch_and_deals_one_draw_out_to_the_ranks():
    labels = [0] * 18 + [1] * 4 + [2]
    weights = class_balanced_weights(labels)
    draw = None
    for world in (1, 2, 3):
        shares = []
        for rank in range(world):
            sampler = ResumableSampler(labels, num_replicas=world, rank=rank, shuffle=True, seed=5, weights=weights)
            sampler.set_epoch(1)
            shares.append(list(sampler))
            for k in range(len(shares[-1]) + 1):
                sampler.set_epoch(1, skip=k * world)
                assert list(sampler) == shares[-1][k:] and len(sampler) == len(shares[-1]) - k
        dealt = [index for group in zip(*shares) for index in group][:len(labels)]
        draw = draw or dealt
        assert dealt == draw  # every position of the epoch's draw goes to exactly one rank


def test_class_weights_auto_is_scikit_learns_balanced_heuristic():
    # n / (classes present x count): 9 / (3 x 6), 9 / (3 x 2), 9 / (3 x 1); class 3 has no items
    assert balanced_weights([0] * 6 + [1] * 2 + [2], 4).tolist() == [0.5, 1.5, 3.0, 1.0]


def test_median_frequency_weights_by_hand():
    masks = [np.array([[0, 0, 0, 1], [0, 0, 255, 255]]), np.array([[0, 2, 2, 2], [255, 255, 255, 255]])]
    # freq: class 0 6 px / 10 non-void px of the masks holding it, class 1 1/6, class 2 3/4; median 0.6;
    # class 3 is in no mask
    weights = median_frequency_weights(masks, 4, ignore_index=255)
    assert np.allclose(weights, [0.6 / 0.6, 0.6 * 6, 0.6 / 0.75, 1.0])


def test_segmentation_class_weights_auto_balance_the_training_masks(tmp_path):
    masks = [np.array([[0, 0, 0, 1], [0, 0, 255, 255]], np.uint8), np.array([[0, 2, 2, 2], [255] * 4], np.uint8)]
    for i, mask in enumerate(masks):
        for kind, pixels in (("images", np.zeros((2, 4, 3), np.uint8)), ("masks", mask)):
            (tmp_path / kind / "train").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / kind / "train" / f"{i}.png")
    common = ["task=segmentation", "dataset=mask_folder", f"dataset.root={tmp_path}", "dataset.num_classes=3",
              "dataset.classes=[background,a,b]"]
    task = C.task_from(runner.compose("train", [*common, "task.class_weights=auto"]))
    task.open_split("train", None, skip_invalid=False, seed=0, train=True)
    assert task.class_weight.tolist() == pytest.approx([1.0, 3.6, 0.8])  # median frequency, as by hand above
    logits, target = torch.randn(2, 3, 2, 4), torch.from_numpy(np.stack(masks)).long()
    expected = F.cross_entropy(logits, target, weight=task.class_weight, ignore_index=255)
    assert torch.allclose(task.training_step(lambda image: logits, {"image": None, "mask": target})["loss"], expected)
    task = C.task_from(runner.compose("train", [*common, "task.class_weights=[1,2]"]))
    with pytest.raises(CvtoolError, match="has 2 values but the dataset has 3 classes: background, a, b"):
        task.open_split("train", None, skip_invalid=False, seed=0, train=True)


def test_class_weights_of_the_wrong_length_are_one_line_exit_2(digits_folder, tmp_path):
    from cvtool.cli.app import app

    result = CliRunner().invoke(app, ["train", *digits_run(digits_folder, tmp_path, "task.class_weights=[1,2]")])
    assert result.exit_code == 2
    assert ("error: task.class_weights has 2 values but the dataset has 5 classes: 0, 1, 2, 3, 4 "
            "(task.class_weights)") in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("value", "message"), [("auto", None), ([1, 2, 0.5], None), ([1, 2], "has 2 values"),
                                                ("balanced", "null, auto or a list"), ([1, -1, 1], "non-negative")])
def test_class_weights_values(value, message):
    measure = lambda: np.array([0.5, 1.5, 3.0])  # noqa: E731
    if message:
        with pytest.raises(CvtoolError, match=message):
            class_weights(value, ["a", "b", "c"], measure)
    else:
        expected = [0.5, 1.5, 3.0] if value == "auto" else [float(v) for v in value]
        assert class_weights(value, ["a", "b", "c"], measure).tolist() == expected


def test_focal_loss_by_hand():
    logits, target = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]), torch.tensor([0, 2])
    p = [math.exp(2) / (math.exp(2) + 1 + math.exp(-1)), 1 / (math.exp(0.5) + math.exp(1.5) + 1)]
    per_item = [-(1 - q) ** 2 * math.log(q) for q in p]
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(sum(per_item) / 2, rel=1e-6)
    alpha = torch.tensor([0.25, 1.0, 3.0])  # class weights act as alpha, normalised like F.cross_entropy's
    expected = (0.25 * per_item[0] + 3.0 * per_item[1]) / 3.25
    assert focal_loss(logits, target, gamma=2.0, weight=alpha).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_with_gamma_0_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    weight, soft = torch.rand(5) + 0.1, torch.softmax(torch.randn(8, 5), dim=1)
    assert torch.equal(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    assert torch.equal(focal_loss(logits, target, gamma=0.0, weight=weight), F.cross_entropy(logits, target, weight))
    for t in (target, soft):
        for w in (None, weight):
            assert torch.allclose(focal_loss(logits, t, gamma=0.0, weight=w, label_smoothing=0.1),
                                  F.cross_entropy(logits, t, weight=w, label_smoothing=0.1))


def test_focal_loss_down_weights_easy_items_and_keeps_finite_gradients():
    logits = torch.tensor([[200.0, 0.0], [0.0, 0.0]], requires_grad=True)  # item 0: p_t = 1 exactly
    target = torch.tensor([0, 0])
    focal_loss(logits, target, gamma=0.5).backward()
    assert torch.isfinite(logits.grad).all()
    easy, hard = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    ratio = lambda x: (focal_loss(x, target[:1], gamma=2.0) / F.cross_entropy(x, target[:1])).item()  # noqa: E731
    assert ratio(easy) < 0.01 and ratio(hard) > 0.9  # (1 - p_t)^2: ~0.002 for p_t = 0.95, ~0.91 for p_t = 0.05


@pytest.mark.parametrize(("overrides", "message"), [
    (["task=segmentation", "data.sampler=balanced"], "data.sampler=balanced draws images by their class label: "
                                                     "classification only"),
    (["data.sampler=rare_first"], "unknown data.sampler 'rare_first'"),
    (["task=segmentation", MIXING], "dataset.batch_transforms mix images and their labels: classification only"),
    (["dataset.batch_transforms=[{_target_: torchvision.transforms.v2.MixUp, num_classes: 3}]"],
     "MixUp has num_classes=3 but the dataset has 5 classes"),
])
def test_training_options_that_cannot_apply_are_refused(overrides, message):
    cfg = runner.compose("train", overrides)
    dataset = torch.utils.data.TensorDataset(torch.zeros(4))
    dataset.targets, dataset.classes = [0, 1, 2, 3], ["a", "b", "c", "d", "e"]
    with pytest.raises(CvtoolError, match=message):
        C.sampling_weights(dataset, cfg)
        C.mixed_collate(dataset, cfg, None)


@pytest.mark.parametrize(("overrides", "message"), [(["task.loss=dice"], "unknown task.loss 'dice'"),
                                                    (["task.loss=focal", "task.focal_gamma=-1"], "focal_gamma")])
def test_unknown_loss_and_negative_gamma_are_refused_before_training(digits_folder, tmp_path, overrides, message):
    with pytest.raises(CvtoolError, match=message):
        train.main(digits_run(digits_folder, tmp_path, *overrides))
