"""`cvtool visualize METHOD ckpt=PATH [source=IMAGE|DIR]`: explain a trained classifier's decisions.

Attribution methods write, per image, the raw map (`<method>/<i>_<name>.npy`, H x W float32) and its heat-map
PNG, plus `<method>.png`: input | map | overlay for every image. `filters` and `activations` write tile grids.
`visualize.evaluate=true` scores saliency, guided backprop, Grad-CAM and occlusion on the split's object masks
(pointing game vs chance, deletion AUC vs random order) and writes `faithfulness.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from rich.console import Console
from rich.table import Table

from cvtool.config import runner
from cvtool.data.image_files import list_images
from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write_text
from cvtool.viz import attribution, features
from cvtool.viz.explain_figure import composite, heat, save_pair, save_png

from . import components as C
from .checkpoints import checkpoint_overrides
from .restore import restore

log = logging.getLogger("cvtool.visualize")
EMBEDDING_VIEWS = ("roc", "projection", "neighbours")  # task=embedding: of the test identities' embeddings
TEXT_VIEWS = ("alignment",)  # task=text: which CTC frame emitted which character
FEATURES = ("filters", "activations", "adversarial", "class_model", "deepdream", "curves", "predictions",
            "dataset", "proposals", *EMBEDDING_VIEWS, *TEXT_VIEWS)
SALIENCY_VARIANTS = ("plain", "smoothgrad", "integrated_gradients")
ATTRIBUTIONS = ("saliency", "guided_backprop", "deconvnet", "gradcam", "guided_gradcam", "occlusion")
SCORED = ("saliency", "guided_backprop", "gradcam", "occlusion")  # the methods evaluate=true compares


def main(method: str, overrides: list[str]) -> dict:
    known = (*attribution.METHODS, *FEATURES)
    if method not in known:
        raise CvtoolError(f"unknown visualization method '{method}'", where="cvtool visualize METHOD",
                          fix=f"one of {', '.join(known)}")
    if method == "predictions":  # boxes / masks / labels drawn by the task, as `cvtool predict` draws them
        from .predict import predict

        return runner.run("visualize", checkpoint_overrides(overrides), predict)[0]
    return runner.run("visualize", checkpoint_overrides(overrides),
                      lambda cfg, run_dir: visualize(method, cfg, run_dir))[0]


def options(cfg: DictConfig) -> attribution.Options:
    v = cfg.visualize
    return attribution.Options(layer=v.layer, samples=v.samples, noise=v.noise, patch=v.patch, stride=v.stride,
                               batch=v.batch)


def open_images(cfg: DictConfig, task, class_names: list[str], source: bool = True):
    """The images of source= (unless `source` is False) or of the evaluation split, untransformed."""
    if cfg.source and source:
        return task.open_source(list_images(cfg.source), None, class_names, Path(cfg.source))
    return task.open_split(cfg.dataset.split, None, skip_invalid=cfg.data.skip_invalid, seed=cfg.seed,
                           classes=class_names)


def spread(count: int | None, total: int) -> list[int]:
    """`count` indices spread evenly over `total` items (all of them when count is None)."""
    count = total if count is None else min(count, total)
    return np.linspace(0, total - 1, count).round().astype(int).tolist()


def load_images(cfg: DictConfig, task, class_names: list[str], hardware, count: int | None, source: bool = True):
    """(uint8 B x C x H x W, normalised batch on the device, true labels or None, names, (dataset, indices)) of
    `count` images spread evenly over source= (unless `source` is False) or the evaluation split."""
    dataset = open_images(cfg, task, class_names, source)
    picked = spread(count, len(dataset))  # spread over the classes (splits are ordered by class)
    names = [Path(dataset.files[i]).stem if dataset.files else str(i) for i in picked]
    images = torch.stack([dataset[i][0] for i in picked])
    targets = getattr(dataset, "targets", None)
    labels = torch.as_tensor([targets[i] for i in picked]) if targets is not None else None
    batch = task.preprocess((images, labels if labels is not None else torch.zeros(len(picked), dtype=torch.long)),
                            hardware)
    return images, batch["image"].contiguous(), labels, names, (dataset, picked)


def class_index(cfg: DictConfig, class_names: list[str]) -> int | None:
    """visualize.target (a class name or index) as an index; None when not set."""
    target = cfg.visualize.target
    if target is None:
        return None
    if str(target) in class_names:
        return class_names.index(str(target))
    if str(target).isdigit() and int(target) < len(class_names):
        return int(target)
    raise CvtoolError(f"visualize.target={target} is not a class of the model", where="visualize.target",
                      fix=f"one of {class_names} or an index below {len(class_names)}")


def target_classes(cfg: DictConfig, model, inputs: torch.Tensor, class_names: list[str]) -> torch.Tensor:
    """visualize.target for every image, else each image's predicted class."""
    index = class_index(cfg, class_names)
    if index is None:
        with torch.no_grad():
            return model(inputs).argmax(dim=1)
    return torch.full((len(inputs),), index, dtype=torch.long, device=inputs.device)


def method_of(method: str, cfg: DictConfig) -> str:
    """`saliency` with visualize.saliency=smoothgrad|integrated_gradients is that variant."""
    if method != "saliency":
        return method
    variant = cfg.visualize.saliency
    if variant not in SALIENCY_VARIANTS:
        raise CvtoolError(f"visualize.saliency={variant} is not a saliency variant", where="visualize.saliency",
                          fix=f"one of {', '.join(SALIENCY_VARIANTS)}")
    return "saliency" if variant == "plain" else variant


def visualize(method: str, cfg: DictConfig, run_dir: Path | None) -> dict:
    if method == "curves":
        return write_curves(cfg, C.run_dir_path(run_dir) or Path("."))
    if method == "dataset":
        return draw_dataset(cfg, C.run_dir_path(run_dir) or Path("."))
    if method == "proposals":
        return draw_proposal_view(cfg, C.run_dir_path(run_dir) or Path("."))
    hardware = dataclasses.replace(C.setup(cfg), channels_last=False)  # captum's hooks want plain layouts
    model, task, class_names, _ = restore(cfg, hardware)
    model = model.float().eval()
    out = C.run_dir_path(run_dir) or Path(".")
    if task.name == "embedding" and method in EMBEDDING_VIEWS:
        return embedding_view(method, cfg, model, task, class_names, hardware, out)
    if method in EMBEDDING_VIEWS:
        raise CvtoolError(f"`cvtool visualize {method}` shows an embedding model's test embeddings; this checkpoint "
                          f"is a {task.name} model", where=str(cfg.ckpt), fix="pass a task=embedding checkpoint")
    if method in TEXT_VIEWS:
        return text_alignment(cfg, model, task, class_names, hardware, out)
    if task.name == "embedding" and method != "filters":
        raise CvtoolError(f"`cvtool visualize {method}` is not for embedding models", where=str(cfg.ckpt),
                          fix=f"use one of {', '.join((*EMBEDDING_VIEWS, 'filters', 'predictions'))}")
    if task.name != "classification" and method in ATTRIBUTIONS:
        return dense_attribution(method_of(method, cfg), cfg, model, task, class_names, hardware, out)
    if task.name != "classification" and method != "filters":
        raise CvtoolError(f"`cvtool visualize {method}` needs a classifier; this checkpoint is a {task.name} model",
                          where=str(cfg.ckpt), fix=f"for {task.name} models use one of "
                          f"{', '.join((*ATTRIBUTIONS, 'filters', 'predictions'))}")
    if method == "filters":
        layer, kernels = features.filters(model)
        np.save(out / "filters.npy", kernels)
        save_png(out / "filters.png", features.tile(kernels))
        log.info("%d filters of %s written to %s", len(kernels), layer, out / "filters.png")
        return {"run_dir": str(out), "layer": layer, "num_filters": len(kernels)}
    if method == "class_model":
        return write_class_models(cfg, model, task, class_names, out)
    images, inputs, labels, names, _ = load_images(cfg, task, class_names, hardware, cfg.visualize.images)
    if method == "activations":
        return write_activations(cfg, model, inputs, names, out)
    if method == "deepdream":
        return write_dreams(cfg, model, task, inputs, names, out)
    if method == "adversarial":
        return write_adversarial(cfg, model, task, class_names, hardware, (images, labels, names), out)
    targets = target_classes(cfg, model, inputs, class_names)
    name = method_of(method, cfg)
    maps, raw = attribution.attribute(name, model, inputs, targets, options(cfg))
    maps, raw = maps.float().cpu().numpy(), None if raw is None else raw.float().cpu().numpy()
    write_maps(out / name, maps, names)
    titles = [f"{class_names[t]}" + (f" (true {class_names[y]})" if labels is not None and y != t else "")
              for t, y in zip(targets.tolist(), (labels if labels is not None else targets).tolist())]
    composite(out / f"{name}.png", images.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).numpy(), maps, titles,
              name, raw)
    log.info("%s maps of %d images written to %s (figure %s.png)", name, len(maps), out / name, name)
    result = {"run_dir": str(out), "method": name, "num_images": len(maps)}
    if cfg.visualize.evaluate:
        result["faithfulness"] = evaluate_methods(cfg, model, task, class_names, hardware, out)
    return result


def explained_region(cfg: DictConfig, model, x: torch.Tensor, class_names: list[str]):
    """Segmentation: (scorer, class, title) for visualize.target (default: the most frequent predicted class
    other than the background, class 0) over the pixels predicted as that class (all pixels if none)."""
    from cvtool.tasks.dense_inference import logits_of

    with torch.no_grad():
        predicted = logits_of(model(x)).argmax(dim=1)
    target = class_index(cfg, class_names)
    if target is None:
        counts = torch.bincount(predicted.flatten(), minlength=len(class_names))
        counts[0] = 0
        target = int(counts.argmax()) if counts.sum() > 0 else 0
    region = predicted == target
    if not region.any():
        region = torch.ones_like(region)
    return attribution.RegionScores(model, region), target, f"{class_names[target]} ({int(region.sum())} px)"


def explained_box(model, x: torch.Tensor, class_names: list[str]):
    """Detection: (scorer, class, title) for the image's top-scoring detection (class None: no detection)."""
    from cvtool.tasks.detection import label_offset

    with torch.no_grad():
        detections = model(list(x))[0]
    if not len(detections["scores"]):
        return None, None, "no detection"
    top = int(detections["scores"].argmax())
    target = int(detections["labels"][top]) - label_offset(model)
    box = detections["boxes"][top:top + 1]
    scorer = attribution.BoxScores(model, len(class_names), label_offset(model), box, torch.tensor([target]))
    corners = ", ".join(f"{v:.0f}" for v in box[0].tolist())
    return scorer, target, f"{class_names[target]} {float(detections['scores'][top]):.2f} [{corners}]"


def explained_joint(cfg: DictConfig, model, x: torch.Tensor, task, dataset):
    """Top-down pose: (scorer, joint, title) for visualize.target (a joint name or index; default: the joint whose
    heatmap peaks highest) of one person crop."""
    if not task.top_down:
        raise CvtoolError("joint attributions read a heatmap network's heatmaps; Keypoint R-CNN's come per RoI",
                          where=str(cfg.ckpt), fix="explain a model=pose_heatmap checkpoint (or its detector's boxes "
                          "with a detection model)")
    scorer = attribution.JointScores(model)
    names = list(dataset.keypoint_names)
    target = class_index(cfg, names)
    with torch.no_grad():
        peaks = scorer(x)[0]
    target = int(peaks.argmax()) if target is None else target
    return scorer, target, f"{names[target]} {float(peaks[target]):.2f}"


def explained_character(cfg: DictConfig, model, x: torch.Tensor, task):
    """(scorer, class, title) of one word crop. CRNN: the character at position visualize.target of the recognised
    word (0-based; or a character, its first occurrence; default the first), explained through the frame where the
    best path emits it most confidently; the dictionary classifier: its top word (or visualize.target, a word)."""
    with torch.no_grad():
        logits = model(x).float()
    if task.dictionary:
        picked = class_index(cfg, task.classes)
        target = int(logits[0].argmax()) if picked is None else picked
        return model, target, f"{task.classes[target]} {float(logits[0].softmax(-1)[target]):.2f}"
    from cvtool.tasks.ctc_decoding import frame_alignment

    probs = logits[0].softmax(dim=-1)
    runs = character_runs(frame_alignment(logits[0]))
    word = task.charset.decode([c for c, _ in runs])
    if not runs:
        return None, None, "nothing read"
    want = cfg.visualize.target
    if want is None:
        position = 0
    elif str(want).isdigit() and int(want) < len(runs):
        position = int(want)
    elif str(want) in word:
        position = word.index(str(want))
    else:
        raise CvtoolError(f"visualize.target={want} is neither a character position nor a character of the "
                          f"recognised word {word!r}", where="visualize.target",
                          fix=f"a position 0..{len(runs) - 1} or one of the characters {word!r}")
    cls, frames = runs[position]
    frame = max(frames, key=lambda f: float(probs[f, cls]))
    return (attribution.FrameScores(model, frame), cls,
            f"{word[position]!r} (#{position} of {word!r}), frame {frame} p={float(probs[frame, cls]):.2f}")


def character_runs(path: list[int]) -> list[tuple[int, list[int]]]:
    """(class, frames) of each character the best path emits: runs of one non-blank class (blank = 0)."""
    runs: list[tuple[int, list[int]]] = []
    previous = 0
    for frame, cls in enumerate(path):
        if cls != 0 and cls == previous:
            runs[-1][1].append(frame)
        elif cls != 0:
            runs.append((cls, [frame]))
        previous = cls
    return runs


def text_alignment(cfg: DictConfig, model, task, class_names: list[str], hardware, out: Path) -> dict:
    """alignment/<name>.png per word crop: the crop with the character each CTC frame emits over its columns, and
    the per-frame class probabilities (the first crop's figure also as alignment.png)."""
    from cvtool.viz.text_plots import alignment_figure

    if task.name != "text" or task.dictionary:
        raise CvtoolError("`cvtool visualize alignment` shows a CTC model's per-frame outputs", where=str(cfg.ckpt),
                          fix="pass a task=text model=crnn checkpoint (a dictionary classifier has no frames: "
                              "use saliency or gradcam)")
    dataset = open_images(cfg, task, class_names)
    picked = spread(cfg.visualize.images, len(dataset))
    (out / "alignment").mkdir(parents=True, exist_ok=True)
    words = []
    for n, i in enumerate(picked):
        image = dataset[i][0].as_subclass(torch.Tensor)
        with torch.no_grad():
            logits = model(task.normalise(image[None], hardware)).float()
        word = task.decode(logits)[0]
        path = out / "alignment" / f"{n:03d}_{Path(dataset.files[i]).stem}.png"
        alignment_figure(path, image.permute(1, 2, 0).expand(-1, -1, 3).numpy(), logits[0].softmax(-1).cpu().numpy(),
                         task.charset.chars, word, dataset.texts[i] or None)
        if n == 0:
            (out / "alignment.png").write_bytes(path.read_bytes())
        words.append(word)
    log.info("CTC alignments of %d word images written to %s", len(picked), out / "alignment")
    return {"run_dir": str(out), "method": "alignment", "num_images": len(picked), "words": words}


def dense_attribution(method: str, cfg: DictConfig, model, task, class_names: list[str], hardware,
                      out: Path) -> dict:
    """An attribution map per image of a segmenter's class region (`explained_region`) or a detector's top box
    (`explained_box`): the model is seen as a classifier of that one score."""
    dataset = open_images(cfg, task, class_names)
    picked = spread(cfg.visualize.images, len(dataset))
    pictures, maps, raws, titles, names = [], [], [], [], []
    for i in picked:
        image = dataset[i][0].as_subclass(torch.Tensor)
        if task.name == "segmentation":
            x = task.normalise(image[None], hardware).contiguous()
            scorer, target, title = explained_region(cfg, model, x, class_names)
        elif task.name == "keypoints":
            x = task.normalise(image[None], hardware).contiguous()
            scorer, target, title = explained_joint(cfg, model, x, task, dataset)
        elif task.name == "text":
            x = task.normalise(image[None], hardware).contiguous()
            scorer, target, title = explained_character(cfg, model, x, task)
        else:  # torchvision-style detectors normalise [0, 1] images themselves
            from cvtool.tasks.detection_proposals import with_proposals

            x = image[None].to(hardware.device).float().div(255)
            scorer, target, title = explained_box(with_proposals(model, dataset[i][1]), x, class_names)
        if target is None:  # nothing detected above the model's score threshold: nothing to explain
            maps.append(np.zeros(tuple(image.shape[-2:]), dtype=np.float32))
            raws.append(np.zeros(tuple(x.shape[1:]), dtype=np.float32))
        else:
            cam, raw = attribution.attribute(method, scorer, x, torch.tensor([target], device=x.device),
                                             options(cfg))
            maps.append(cam[0].float().cpu().numpy())
            raws.append(None if raw is None else raw[0].float().cpu().numpy())
        pictures.append(image.permute(1, 2, 0).expand(-1, -1, 3).numpy())
        titles.append(title)
        item = dataset.items[i] if hasattr(dataset, "items") else None
        names.append(str(getattr(item, "image_id", Path(getattr(item, "path", str(i))).stem)))
    write_maps(out / method, maps, names)
    composite(out / f"{method}.png", pictures, maps, titles, method,
              None if any(r is None for r in raws) else np.stack(raws))
    log.info("%s maps of %d images written to %s (figure %s.png)", method, len(maps), out / method, method)
    return {"run_dir": str(out), "method": method, "num_images": len(maps), "classes": titles}


def embedding_view(method: str, cfg: DictConfig, model, task, class_names: list[str], hardware, out: Path) -> dict:
    """The test split's embeddings as roc.png (verification ROC), projection.png (2-D PCA/t-SNE coloured by
    identity) or neighbours.png (visualize.images queries spread over the split and their nearest others)."""
    from cvtool.engine.inference import run_inference
    from cvtool.viz import embedding_plots as plots

    dataset = task.open_split(cfg.dataset.split, C.transforms(cfg, "eval_transforms"),
                              skip_invalid=cfg.data.skip_invalid, seed=cfg.seed, classes=class_names)
    evaluator = task.build_evaluator(dataset)
    metrics = run_inference(model, task, C.loader(dataset, cfg, hardware, train=False), evaluator, hardware)
    verification, title = metrics["verification"], f"{cfg.model.name}: {dataset.source}"
    if method == "roc":
        path = plots.roc_figure(out / "roc.png", *evaluator.last_roc, auc=verification["roc_auc"],
                                eer=verification["eer"], tar_at_far=verification["tar_at_far_1e-3"], title=title)
    elif method == "projection":
        path = plots.projection_figure(out / "projection.png", evaluator.embeddings, np.asarray(dataset.targets),
                                       dataset.identities, method=cfg.visualize.projection,
                                       max_identities=cfg.visualize.identities, seed=cfg.seed, title=title)
    else:
        queries = spread(cfg.visualize.images, len(dataset))
        k = min(cfg.task.neighbours, len(dataset) - 1)
        indices, distances = plots.nearest_neighbours(evaluator.embeddings, queries, k)
        shown = {*queries, *indices.ravel().tolist()}
        images = [dataset.images.load_image(i).permute(1, 2, 0).expand(-1, -1, 3).numpy() if i in shown else None
                  for i in range(len(dataset))]
        path = plots.neighbours_figure(out / "neighbours.png", images, queries, indices, distances,
                                       dataset.targets, dataset.identities, threshold=verification["threshold"])
    log.info("%s of %d test embeddings written to %s", method, len(dataset), path)
    return {"run_dir": str(out), "method": method, "file": str(path), "metrics": metrics}


def draw_dataset(cfg: DictConfig, out: Path) -> dict:
    """The ground truth (labels, boxes, masks) of the first `overlays` images of the split, no model needed."""
    task = C.task_from(cfg)
    dataset = task.open_split(cfg.dataset.split, None, skip_invalid=cfg.data.skip_invalid, seed=cfg.seed)
    count = len(dataset) if cfg.overlays is None else min(cfg.overlays, len(dataset))
    drawn = task.draw_overlays(out / "dataset", dataset, task.ground_truth(dataset, count), count)
    log.info("ground truth of %d images of %s written to %s", drawn, dataset.source, out / "dataset")
    return {"run_dir": str(out), "num_images": drawn}


def draw_proposal_view(cfg: DictConfig, out: Path) -> dict:
    """Detection: the top 50 region proposals over the first visualize.images images of the split; the proposals of
    ckpt='s model (model.proposals), else of task.proposals.method (a method or a proposal file)."""
    from cvtool.viz.proposal_plots import draw_proposals

    if cfg.task.name != "detection":
        raise CvtoolError("proposals are drawn for detection", where="task", fix="use task=detection")
    task = C.task_from(cfg)
    task.proposal_spec = task.proposal_spec or str(cfg.task.proposals.method)
    dataset = task.open_split(cfg.dataset.split, None, skip_invalid=cfg.data.skip_invalid, seed=cfg.seed)
    count = min(cfg.visualize.images, len(dataset))
    for index in range(count):
        image, target = dataset[index]
        draw_proposals(image.permute(1, 2, 0).numpy(), target["proposals"].numpy(),
                       out / "proposals" / f"{index:05d}_{target['image_id']}.png")
    log.info("proposals (%s) of %d images written to %s", task.proposal_spec, count, out / "proposals")
    return {"run_dir": str(out), "num_images": count, "proposals": task.proposal_spec}


def write_curves(cfg: DictConfig, out: Path) -> dict:
    """The training curves (loss, learning rate, validation metric) of the run that wrote ckpt=."""
    from cvtool.engine.checkpoint import resolve_checkpoint_path
    from cvtool.engine.metrics_log import read_records
    from cvtool.viz.curves import plot_training_curves

    if not cfg.ckpt:
        raise CvtoolError("`cvtool visualize curves` draws a training run", where="ckpt",
                          fix="pass ckpt=runs/<task>/train/<timestamp> (the run dir or one of its checkpoints)")
    ckpt = resolve_checkpoint_path(cfg.ckpt)
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise CvtoolError("the run has no metrics.jsonl", where=str(path), fix="pass a checkpoint of a cvtool run")
    records = read_records(path)
    metrics = [k for r in records for k in r if k.startswith("val/")]
    metric = f"val/{cfg.task.metric}" if f"val/{cfg.task.metric}" in metrics else (metrics or ["val/loss"])[0]
    figure = plot_training_curves(records, out / "training_curves.png", metric)
    log.info("training curves of %s written to %s", run, figure)
    return {"run_dir": str(out), "run": str(run), "metric": metric, "records": len(records)}


def write_maps(directory: Path, maps: np.ndarray, names: list[str]) -> None:
    for i, (map_, name) in enumerate(zip(maps, names)):
        save_pair(directory, f"{i:04d}_{name}", map_, heat(map_))


def write_activations(cfg: DictConfig, model, inputs: torch.Tensor, names: list[str], out: Path) -> dict:
    layer = str(cfg.visualize.layer or attribution.last_conv_block(model))
    maps = features.activations(model, inputs, layer)
    directory = out / "activations"
    for i, (stack, name) in enumerate(zip(maps, names)):
        save_pair(directory, f"{i:04d}_{name}", stack, features.tile(features.scaled(stack, (1, 2))))
    log.info("activations of %s (%s per image) written to %s", layer, "x".join(map(str, maps.shape[1:])),
             directory)
    return {"run_dir": str(out), "layer": layer, "shape": list(maps.shape)}


def ascent(cfg: DictConfig):
    from cvtool.viz.synthesis import Ascent

    v = cfg.visualize
    return Ascent(steps=v.ascent_steps, lr=v.ascent_lr, l2=v.l2, jitter=v.jitter, blur_every=v.blur_every,
                  blur_sigma=v.blur_sigma, octaves=v.octaves, octave_scale=v.octave_scale)


def to_pixels(task, x: torch.Tensor) -> np.ndarray:
    """Normalised B x C x H x W -> B x H x W x C in [0, 1] with the dataset's mean and std."""
    mean = torch.tensor(task.normalise.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(task.normalise.std, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def write_class_models(cfg: DictConfig, model, task, class_names: list[str], out: Path) -> dict:
    """One synthesised image per class (or visualize.target): class_model/<class>.png and a grid."""
    from cvtool.viz.synthesis import class_model

    index = class_index(cfg, class_names)
    classes = list(range(len(class_names))) if index is None else [index]
    size = int(cfg.dataset.image_size)
    images = to_pixels(task, class_model(model, classes, (int(cfg.dataset.channels), size, size), ascent(cfg),
                                         cfg.seed))
    directory = out / "class_model"
    for image, k in zip(images, classes):
        save_pair(directory, class_names[k], image, image.squeeze())
    save_png(out / "class_model.png", features.tile(features.scaled(images, (1, 2, 3)), pad=2).squeeze())
    log.info("class models of %d classes written to %s", len(classes), directory)
    return {"run_dir": str(out), "classes": [class_names[k] for k in classes], "shape": list(images.shape)}


def write_dreams(cfg: DictConfig, model, task, inputs: torch.Tensor, names: list[str], out: Path) -> dict:
    """DeepDream of each picked image at visualize.layer (default: the last convolution)."""
    from cvtool.viz.synthesis import deepdream

    layer = str(cfg.visualize.layer or attribution.last_conv_block(model))
    module = attribution.module_named(model, layer)
    dreams = torch.cat([deepdream(model, module, x[None], ascent(cfg), cfg.seed) for x in inputs])
    pictures = to_pixels(task, dreams)
    directory = out / "deepdream"
    for i, (picture, name) in enumerate(zip(pictures, names)):
        save_pair(directory, f"{i:04d}_{name}", picture, picture.squeeze())
    pairs = np.concatenate([to_pixels(task, inputs), pictures], axis=2)  # input | dream, side by side
    save_png(out / "deepdream.png", features.tile(pairs, pad=2).squeeze())
    log.info("DeepDream of %d images at layer %s written to %s", len(names), layer, directory)
    return {"run_dir": str(out), "layer": layer, "num_images": len(names)}


def write_adversarial(cfg: DictConfig, model, task, class_names: list[str], hardware, picked, out: Path) -> dict:
    """Adversarial versions of the picked images (against the true class, else the prediction) with the
    original and new predictions; over the split (labelled data), the accuracy vs epsilon curve."""
    from cvtool.viz import adversarial as adv
    from cvtool.viz.explain_figure import accuracy_plot, adversarial_figure

    v = cfg.visualize
    if v.attack not in adv.ATTACKS:
        raise CvtoolError(f"visualize.attack={v.attack} is not an attack", where="visualize.attack",
                          fix=f"one of {', '.join(adv.ATTACKS)}")
    pixel_model = adv.PixelSpace(model, task.normalise.mean, task.normalise.std).to(hardware.device)
    images, labels, names = picked
    clean = images.float().div(255).to(hardware.device)
    before = adv.predictions(pixel_model, clean)
    targets = labels.to(hardware.device) if labels is not None else before
    perturbed = adv.perturb(pixel_model, clean, targets, v.epsilon, v.attack, v.pgd_steps)
    with torch.no_grad():
        p_clean, p_adv = (torch.softmax(pixel_model(x), dim=1).cpu() for x in (clean, perturbed))
    after = p_adv.argmax(dim=1)
    directory = out / "adversarial"
    as_hwc = perturbed.permute(0, 2, 3, 1).cpu().numpy()
    for i, name in enumerate(names):
        save_pair(directory, f"{i:04d}_{name}", as_hwc[i], as_hwc[i].squeeze())
    def title(p, k):
        return f"{class_names[k]} {float(p[k]):.2f}"

    adversarial_figure(out / "adversarial.png", clean.permute(0, 2, 3, 1).cpu().numpy(), as_hwc,
                       [title(p, k) for p, k in zip(p_clean, before.cpu())],
                       [title(p, k) for p, k in zip(p_adv, after)], v.epsilon)
    flipped = int((after != before.cpu()).sum())
    log.info("%s at epsilon %g changed %d of %d predictions; images in %s", v.attack.upper(), v.epsilon, flipped,
             len(names), directory)
    result = {"run_dir": str(out), "attack": v.attack, "epsilon": v.epsilon, "num_images": len(names),
              "flipped": flipped}
    if labels is not None or not cfg.source:
        split_images, _, split_labels, _, _ = load_images(cfg, task, class_names, hardware, v.eval_images,
                                                          source=False)
        epsilons = list(v.epsilons)
        accuracy = adv.accuracy_curve(pixel_model, split_images.float().div(255).to(hardware.device),
                                      split_labels.to(hardware.device), epsilons, v.attack, v.pgd_steps, v.batch)
        curve = {"attack": v.attack, "num_images": len(split_images), "epsilon": epsilons, "accuracy": accuracy}
        atomic_write_text(out / "accuracy_vs_epsilon.json", json.dumps(curve, indent=2))
        accuracy_plot(out / "accuracy_vs_epsilon.png", epsilons, accuracy, v.attack)
        log.info("accuracy vs epsilon (%s): %s", v.attack,
                 ", ".join(f"{e:g}: {a:.3f}" for e, a in zip(epsilons, accuracy)))
        result["curve"] = curve
    return result


def object_masks(cfg: DictConfig, dataset, picked: list[int]) -> np.ndarray:
    """The generator's object masks of the `picked` items: <root>/masks/<split>/<class>/<file>."""
    root = Path(cfg.dataset.root)
    if not dataset.files:
        raise CvtoolError("visualize.evaluate=true needs image files with object masks", where=cfg.dataset.name,
                          fix="use the shapes data (its generator writes masks/ next to the images)")
    masks = []
    for file in (dataset.files[i] for i in picked):
        path = root / "masks" / Path(file).relative_to(root)
        if not path.is_file():
            raise CvtoolError("no object mask for this image", where=str(path),
                              fix="visualize.evaluate=true needs <root>/masks/<split>/<class>/<file> (the shapes "
                                  "generator writes them)")
        masks.append(np.asarray(Image.open(path).convert("L")) > 0)
    return np.stack(masks)


def paired_interval(differences: np.ndarray) -> dict:
    """Mean of per-image differences with a normal 95% confidence interval (below random when `high` < 0)."""
    mean = float(differences.mean())
    half = 1.96 * float(differences.std(ddof=1)) / np.sqrt(len(differences)) if len(differences) > 1 else 0.0
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def evaluate_methods(cfg: DictConfig, model, task, class_names: list[str], hardware, out: Path) -> dict:
    """Pointing game and deletion AUC of each scored method on the split, with chance and random order."""
    from cvtool.viz.faithfulness import blurred, deletion_auc, pointing_hits

    _, inputs, labels, _, (dataset, picked) = load_images(cfg, task, class_names, hardware,
                                                          cfg.visualize.eval_images, source=False)
    masks = object_masks(cfg, dataset, picked)
    labels = labels.to(inputs.device)
    steps, batch = cfg.visualize.deletion_steps, cfg.visualize.batch
    blur = cfg.visualize.deletion_blur
    if blur < 0:
        raise CvtoolError(f"visualize.deletion_blur={blur} is negative", where="visualize.deletion_blur",
                          fix="use a sigma in px, a fraction (< 1) of the image side, or 0 for a grey fill")
    fill = blurred(inputs, blur) if blur else None

    def aucs(maps: np.ndarray | None) -> np.ndarray:
        return np.concatenate([deletion_auc(model, inputs[i:i + batch], labels[i:i + batch],
                                            None if maps is None else maps[i:i + batch], steps, cfg.seed,
                                            None if fill is None else fill[i:i + batch])
                               for i in range(0, len(inputs), batch)])

    random_order = aucs(None)
    rows = {"chance / random": {"pointing_game": float(masks.mean()), "deletion_auc": float(random_order.mean())}}
    for name in SCORED:
        maps = np.concatenate([attribution.attribute(name, model, inputs[i:i + batch], labels[i:i + batch],
                                                     options(cfg))[0].float().cpu().numpy()
                               for i in range(0, len(inputs), batch)])
        auc = aucs(maps)
        rows[name] = {"pointing_game": float(pointing_hits(maps, masks).mean()), "deletion_auc": float(auc.mean()),
                      "deletion_vs_random": paired_interval(auc - random_order)}
    removal = f"blurred (sigma {blur})" if blur else "grey"
    table = Table(title=f"attribution quality on {len(inputs)} images of {dataset.source} (true class; deleted "
                        f"pixels {removal})")
    table.add_column("method")
    table.add_column("pointing game (higher is better)", justify="right")
    table.add_column("deletion AUC (lower is better)", justify="right")
    table.add_column("deletion - random, 95% CI", justify="right")
    for name, row in rows.items():
        low, high = row.get("deletion_vs_random", {}).get("ci95", (None, None))
        table.add_row(name, f"{row['pointing_game']:.3f}", f"{row['deletion_auc']:.3f}",
                      "" if low is None else f"[{low:+.3f}, {high:+.3f}]")
    Console().print(table)
    result = {"num_images": len(inputs), "deletion_fill": removal, "methods": rows}
    atomic_write_text(out / "faithfulness.json", json.dumps(result, indent=2))
    return result
