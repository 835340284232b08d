"""`cvtool visualize`: attribution maps that mean something, files of the documented shapes, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import only_run_dir
from torch import nn

from cvtool.commands import train, visualize
from cvtool.errors import CvtoolError
from cvtool.viz.attribution import Options, attribute
from cvtool.viz.faithfulness import deletion_auc, pointing_hits

SIZE = 64


def test_saliency_of_a_linear_model_is_its_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    images, targets = torch.randn(2, 3, 8, 8), torch.tensor([1, 3])
    maps, _ = attribute("saliency", model, images, targets, Options())
    weights = model[1].weight.detach().view(4, 3, 8, 8).abs().amax(dim=1)
    torch.testing.assert_close(maps, weights[targets])


class LooksAtOneCorner(nn.Module):
    """Class 0's logit is 5 x the mean brightness of the top-left 8 x 8 pixels; class 1's is 0."""

    def forward(self, x):
        score = 5 * x[:, :, :8, :8].mean(dim=(1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_occlusion_lights_up_the_region_the_model_looks_at():
    images = torch.ones(1, 3, 32, 32)
    maps, _ = attribute("occlusion", LooksAtOneCorner(), images, torch.tensor([0]), Options(patch=4, stride=2))
    assert maps.shape == (1, 32, 32)
    inside, outside = maps[0, :8, :8], maps[0].clone()
    outside[:12, :12] = 0  # windows that reach into the corner share its credit
    assert float(inside.min()) > 0 and float(outside.abs().max()) == 0


def test_pointing_game_and_deletion_curve_by_hand():
    maps = np.zeros((2, 4, 4))
    maps[0, 1, 1], maps[1, 3, 3] = 1, 1
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True
    assert pointing_hits(maps, masks).tolist() == [True, False]
    # deleting the one pixel the model reads first drops the probability to 0.5 at once
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0, 5] = 100.0  # pixel (1, 1)
    auc = deletion_auc(model, torch.ones(1, 1, 4, 4), torch.tensor([0]), maps[:1, None].squeeze(1), steps=16)
    assert auc[0] == pytest.approx(0.5 + 0.5 / 16 / 2, abs=1e-6)  # 1.0 -> 0.5 over the first 1/16, then 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[list[str], str]:
    """A small shapes classifier (2,000 images, 15 epochs: ~1 min): overrides for its data and its best.pt."""
    from cvtool.data.shapes import ensure_shapes

    root = tmp_path_factory.mktemp("vis")
    ensure_shapes("classification", root / "datasets" / "shapes" / "classification", num_train=2000, num_val=100,
                  image_size=SIZE, min_size=12, max_size=48, seed=0)
    data = [f"paths.datasets={root / 'datasets'}", "dataset.synth.num_train=2000", "dataset.synth.num_val=100",
            "hardware=cpu", "data.workers=0"]
    train.main([*data, f"paths.runs={root / 'runs'}", "trainer.epochs=15", "data.batch_size=32",
                "logger=[]", "plots=false"])
    ckpt = only_run_dir(root / "runs" / "classification" / "train") / "checkpoints" / "best.pt"
    return data, str(ckpt)


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "deconvnet", "gradcam", "guided_gradcam",
                                    "occlusion"])
def test_every_method_writes_maps_and_a_figure(trained, tmp_path, method):
    data, ckpt = trained
    result = visualize.main(method, [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path}", "visualize.images=3"])
    run = only_run_dir(tmp_path / "classification" / "visualize")
    maps = sorted((run / method).glob("*.npy"))
    assert result["num_images"] == 3 and len(maps) == 3 and len(list((run / method).glob("*.png"))) == 3
    assert all(np.load(m).shape == (SIZE, SIZE) and np.isfinite(np.load(m)).all() for m in maps)
    assert (run / f"{method}.png").stat().st_size > 5_000


@pytest.mark.parametrize("variant", ["smoothgrad", "integrated_gradients"])
def test_saliency_variants(trained, tmp_path, variant):
    data, ckpt = trained
    visualize.main("saliency", [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path}", "visualize.images=2",
                                f"visualize.saliency={variant}", "visualize.samples=4"])
    run = only_run_dir(tmp_path / "classification" / "visualize")
    assert len(list((run / variant).glob("*.npy"))) == 2


def test_filters_and_activations(trained, tmp_path):
    data, ckpt = trained
    result = visualize.main("filters", [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path / 'f'}"])
    run = only_run_dir(tmp_path / "f" / "classification" / "visualize")
    kernels = np.load(run / "filters.npy")
    assert kernels.shape[0] == result["num_filters"] and kernels.shape[-1] == 3 and 0 <= kernels.min() <= 1
    result = visualize.main("activations", [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path / 'a'}",
                                            "visualize.images=2", "visualize.layer=10"])  # a numeric name
    assert result["layer"] == "10"
    run = only_run_dir(tmp_path / "a" / "classification" / "visualize")
    stacks = sorted((run / "activations").glob("*.npy"))
    assert len(stacks) == 2 and list(np.load(stacks[0]).shape) == result["shape"][1:]


def test_maps_of_a_trained_model_point_at_the_object(trained, tmp_path):
    data, ckpt = trained
    result = visualize.main("gradcam", [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path}", "visualize.images=1",
                                        "visualize.evaluate=true", "visualize.eval_images=100",
                                        "visualize.stride=4"])  # occlusion: 256 windows per image, not 1,024
    rows = result["faithfulness"]["methods"]
    run = only_run_dir(tmp_path / "classification" / "visualize")
    assert json.loads((run / "faithfulness.json").read_text())["methods"] == rows
    chance = rows["chance / random"]
    assert rows["gradcam"]["pointing_game"] > 0.6 > 3 * chance["pointing_game"]
    assert rows["occlusion"]["pointing_game"] > 0.4
    for method in ("saliency", "guided_backprop", "gradcam", "occlusion"):
        assert rows[method]["deletion_auc"] < chance["deletion_auc"] - 0.05, method
        assert rows[method]["deletion_vs_random"]["ci95"][1] < 0, method  # below random, not by chance


def test_bad_method_layer_and_target_are_clear_errors(trained, tmp_path):
    data, ckpt = trained
    common = [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path}"]
    with pytest.raises(CvtoolError, match="unknown visualization method 'salincy'"):
        visualize.main("salincy", common)
    with pytest.raises(CvtoolError, match="no layer 'nope'"):
        visualize.main("gradcam", [*common, "visualize.layer=nope"])
    with pytest.raises(CvtoolError, match="not a class of the model"):
        visualize.main("saliency", [*common, "visualize.target=hexagon"])
    with pytest.raises(CvtoolError, match="deletion_blur=-1 is negative"):
        visualize.main("saliency", [*common, "visualize.images=1", "visualize.evaluate=true",
                                    "visualize.eval_images=2", "visualize.deletion_blur=-1"])


def test_fgsm_at_zero_changes_nothing_and_stays_in_the_epsilon_ball():
    from cvtool.viz.adversarial import PixelSpace, perturb

    torch.manual_seed(0)
    model = PixelSpace(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)), [0.5] * 3, [0.25] * 3)
    images, targets = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    assert torch.equal(perturb(model, images, targets, 0.0), images)
    for attack in ("fgsm", "pgd"):
        adversarial = perturb(model, images, targets, 0.05, attack)
        assert float((adversarial - images).abs().max()) <= 0.05 + 1e-6
        assert 0 <= float(adversarial.min()) and float(adversarial.max()) <= 1
        with torch.no_grad():  # the true class's logit goes down (the loss goes up)
            before, after = model(images).gather(1, targets[:, None]), model(adversarial).gather(1, targets[:, None])
        assert bool((after < before).all()), attack


def test_adversarial_flips_predictions_and_draws_the_accuracy_curve(trained, tmp_path):
    data, ckpt = trained
    common = [*data, f"ckpt={ckpt}", "visualize.images=8", "visualize.eval_images=100"]
    clean = visualize.main("adversarial", [*common, f"paths.runs={tmp_path / 'a'}", "visualize.epsilon=0",
                                           "visualize.epsilons=[0.0,0.05]"])
    assert clean["flipped"] == 0
    result = visualize.main("adversarial", [*common, f"paths.runs={tmp_path / 'b'}", "visualize.epsilon=0.05",
                                            "visualize.epsilons=[0.0,0.05]"])
    assert result["flipped"] >= 4  # of 8
    accuracy = result["curve"]["accuracy"]
    assert accuracy[0] == clean["curve"]["accuracy"][0] > 0.6 and accuracy[1] < accuracy[0] - 0.3
    run = only_run_dir(tmp_path / "b" / "classification" / "visualize")
    assert json.loads((run / "accuracy_vs_epsilon.json").read_text())["accuracy"] == accuracy
    assert len(list((run / "adversarial").glob("*.npy"))) == 8 and (run / "adversarial.png").is_file()
    assert (run / "accuracy_vs_epsilon.png").is_file()


def test_class_models_raise_their_class_score_and_deepdream_its_layer(trained, tmp_path):
    from cvtool.commands import components as C
    from cvtool.commands.restore import restore
    from cvtool.config import runner
    from cvtool.viz.attribution import last_conv, module_named
    from cvtool.viz.features import activations
    from cvtool.viz.synthesis import Ascent, class_model, deepdream

    data, ckpt = trained
    result = visualize.main("class_model", [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path / 'c'}",
                                            "visualize.ascent_steps=8"])
    run = only_run_dir(tmp_path / "c" / "classification" / "visualize")
    assert result["shape"] == [5, SIZE, SIZE, 3] and len(list((run / "class_model").glob("*.png"))) == 5
    result = visualize.main("deepdream", [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path / 'd'}",
                                          "visualize.images=2", "visualize.ascent_steps=4", "visualize.octaves=2"])
    run = only_run_dir(tmp_path / "d" / "classification" / "visualize")
    assert [np.load(p).shape for p in sorted((run / "deepdream").glob("*.npy"))] == [(SIZE, SIZE, 3)] * 2

    cfg = runner.compose("visualize", [*data, f"ckpt={ckpt}"])
    model, *_ = restore(cfg, C.setup(cfg))
    start = torch.zeros(5, 3, SIZE, SIZE)
    synthesised = class_model(model, list(range(5)), (3, SIZE, SIZE), Ascent(steps=20))
    with torch.no_grad():
        gain = model(synthesised).diagonal() - model(start).diagonal()
    assert bool((gain > 0).all())
    layer = last_conv(model)
    image = torch.randn(1, 3, SIZE, SIZE) * 0.5
    dream = deepdream(model, module_named(model, layer), image, Ascent(steps=6, octaves=2))
    assert dream.shape == image.shape
    assert (activations(model, dream, layer) ** 2).mean() > (activations(model, image, layer) ** 2).mean()


def test_curves_and_predictions_pictures(trained, tmp_path):
    data, ckpt = trained
    result = visualize.main("curves", [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path / 'c'}"])
    run = only_run_dir(tmp_path / "c" / "classification" / "visualize")
    assert result["metric"] == "val/top1" and (run / "training_curves.png").stat().st_size > 10_000
    visualize.main("predictions", [*data, f"ckpt={ckpt}", f"paths.runs={tmp_path / 'p'}", "overlays=3"])
    run = only_run_dir(tmp_path / "p" / "classification" / "visualize")
    assert len(list((run / "overlays").glob("*.png"))) == 3
    visualize.main("dataset", [*data, f"paths.runs={tmp_path / 'd'}", "overlays=2"])
    run = only_run_dir(tmp_path / "d" / "classification" / "visualize")
    assert len(list((run / "dataset").glob("*.png"))) == 2


def test_region_scores_average_a_segmenters_logits_over_the_region():
    from cvtool.viz.attribution import RegionScores

    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1)
    x, region = torch.randn(2, 3, 5, 7), torch.rand(2, 5, 7) > 0.5
    expected = torch.stack([model(x)[b][:, region[b]].mean(dim=1) for b in range(2)])
    torch.testing.assert_close(RegionScores(model, region)(x), expected)


@pytest.mark.parametrize("task, model", [("segmentation", ["model=unet", "model.width=8", "model.depth=2"]),
                                         ("detection", ["model=yolo", "model.width=8", "model.score_thresh=0.0"])])
def test_gradcam_of_segmenters_and_detectors(tmp_path_factory, tmp_path, task, model):
    from cvtool.data.shapes import generate_devkit

    devkit = generate_devkit(tmp_path_factory.mktemp("devkit") / "devkit", num_train=8, num_val=4, image_size=128,
                             min_objects=1, max_objects=4, min_size=12, max_size=48, seed=0)
    common = [f"task={task}", f"dataset.root={devkit}", "dataset.synth=null", "hardware=cpu", *model]
    train.main([*common, f"paths.runs={tmp_path / 't'}", "data.batch_size=4", "trainer.epochs=1",
                "logger=[]", "plots=false"])
    ckpt = only_run_dir(tmp_path / "t" / task / "train") / "checkpoints" / "last.pt"
    for method in ("gradcam", "saliency", "guided_backprop", "occlusion"):
        result = visualize.main(method, [*common, f"ckpt={ckpt}", f"paths.runs={tmp_path / method}",
                                         "visualize.images=2", "visualize.stride=8"])
        run = only_run_dir(tmp_path / method / task / "visualize")
        maps = sorted((run / method).glob("*.npy"))
        assert result["num_images"] == 2 and [np.load(m).shape for m in maps] == [(128, 128)] * 2, method
        assert "no detection" not in result["classes"] and all(np.isfinite(np.load(m)).all() for m in maps)
        if method == "saliency":  # the explained score depends on the image
            assert all(np.load(m).max() > 0 for m in maps)
        assert (run / f"{method}.png").is_file()
    with pytest.raises(CvtoolError, match="needs a classifier"):
        visualize.main("class_model", [*common, f"ckpt={ckpt}", f"paths.runs={tmp_path / 'w'}"])
    assert visualize.main("dataset", [*common, f"paths.runs={tmp_path / 'd'}", "overlays=3"])["num_images"] == 3
    run = only_run_dir(tmp_path / "d" / task / "visualize")
    assert len(list((run / "dataset").glob("*.png"))) == 3


def test_gradcams_default_layer_is_the_last_conv_blocks_rectified_output():
    from cvtool.models import create_model
    from cvtool.viz.attribution import last_conv_block

    assert last_conv_block(create_model("shapes_cnn", num_classes=5)) == "19"  # conv 17 -> BatchNorm -> ReLU 19
    assert last_conv_block(create_model("resnet18", num_classes=5)) == "layer4.1"  # the residual block (+ ReLU)
    assert last_conv_block(create_model("vgg11", num_classes=5)) == "features.19"  # conv 18 -> ReLU 19
    assert last_conv_block(create_model("unet", num_classes=5, width=4, aux=True)) == "head"  # not the aux head
