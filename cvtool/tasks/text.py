"""Text recognition adapter: cropped word images (MJSynth layout or `path<TAB>text` files) read either as a character
sequence (CRNN: per-frame class scores trained with CTC, decoded greedily or against a lexicon) or as one word of a
lexicon (Jaderberg et al.'s dictionary classifier, a classifier whose classes are words); both are scored with the
same word/character metrics."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from cvtool.data.charset import Charset, check_labels
from cvtool.data.roots import prepared_root
from cvtool.data.word_sets import WordSet, open_word_set
from cvtool.engine.hardware import Hardware
from cvtool.errors import CvtoolError
from cvtool.metrics.base import Baseline

from .images import Normaliser, registry_model

log = logging.getLogger("cvtool.text")

DICTIONARY_MODELS = ("word_classifier",)  # models whose classes are the words of a lexicon (not characters)
DECODERS = ("greedy", "lexicon")


class TextTask:
    name = "text"
    amp_inference = True

    def __init__(self, task_cfg: dict, dataset_cfg: dict, model_cfg: dict | None = None):
        self.cfg, self.dataset_cfg = task_cfg, dataset_cfg
        self.charset = Charset(task_cfg["charset"], case=task_cfg["case"], unknown=task_cfg["unknown_chars"])
        self.dictionary = model_cfg is not None and model_cfg["name"] in DICTIONARY_MODELS
        self.normalise = Normaliser(dataset_cfg["mean"], dataset_cfg["std"])
        self.frame_stride = task_cfg["frame_stride"]
        self._lexicon: tuple[list[str], list[list[int]]] | None = None
        if task_cfg["decode"] not in DECODERS:
            raise CvtoolError(f"unknown task.decode {task_cfg['decode']!r}", where="task.decode",
                              fix=f"one of {', '.join(DECODERS)}")

    @property
    def metric(self) -> str:
        return self.cfg["metric"]

    @property
    def size(self) -> tuple[int, int]:
        """dataset.image_size as (height, width) (a single number: a square)."""
        size = self.dataset_cfg["image_size"]
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def frames(self) -> int | None:
        """Output frames of a sequence model for dataset.image_size (None for the dictionary classifier)."""
        return None if self.dictionary else self.size[1] // self.frame_stride

    # --- data ------------------------------------------------------------------------------------------------
    def open_split(self, split: str, transform, *, skip_invalid: bool, seed: int, classes: list[str] | None = None,
                   train: bool = False, problems: list[str] | None = None) -> WordSet:
        """The split's annotation file (dataset.annotations with {split}) under dataset.root; labels checked
        against task.charset (and, for CTC, against the model's frames) before any training."""
        ds = self.dataset_cfg
        root = prepared_root(ds)
        if root is None:
            raise CvtoolError("dataset.root is not set", where="dataset.root",
                              fix="point dataset.root at an MJSynth folder (annotation_<split>.txt + lexicon.txt)")
        annotation = root / ds["annotations"].format(split=split)
        lexicon = root / ds["lexicon"] if ds.get("lexicon") else None
        dataset = open_word_set(annotation, root=root, lexicon_path=lexicon, size=self.size,
                                channels=ds["channels"], skip_invalid=skip_invalid,
                                source=f"{annotation} ({split})")
        kept, targets, skipped = check_labels(dataset.items, self.charset, self.frames, width=self.size[1])
        if skipped:
            kept_items = set(kept)
            dataset = dataset.subset([i for i, item in enumerate(dataset.items) if item in kept_items])
        dataset.labels = [self.charset.decode(t) for t in targets]
        dataset.classes = self.word_classes(dataset, classes) if self.dictionary else list(self.charset.chars)
        if self.dictionary:
            self.bind_classes(dataset.classes)
        if classes is not None and not self.dictionary and list(classes) != dataset.classes:
            raise CvtoolError(f"the model reads the characters {''.join(classes)!r}, task.charset is "
                              f"{self.charset.chars!r}", where="task.charset",
                              fix="evaluate with the charset the model was trained with (drop task.charset=)")
        if self.dictionary and train:
            dataset = self.in_lexicon(dataset)
        if ds.get("cache") and problems is None:
            dataset.cache()
        dataset.transform = transform
        return dataset

    def word_classes(self, dataset: WordSet, classes: list[str] | None) -> list[str]:
        """The dictionary classifier's classes: the model's own words, else the training split's task.lexicon_size
        most frequent labels (ties in order of first appearance)."""
        if classes is not None:
            return list(classes)
        counts = Counter(dataset.labels)
        words = sorted(counts, key=lambda w: -counts[w])[:self.cfg["lexicon_size"]]
        if len(words) < 2:
            raise CvtoolError(f"the dictionary classifier needs at least 2 distinct words, found {len(words)}",
                              where=str(dataset.source), fix="train on more words, or use model=crnn")
        return words

    def in_lexicon(self, dataset: WordSet) -> WordSet:
        """The training items whose word is one of the classifier's classes (the others cannot be learned)."""
        known = set(dataset.classes)
        keep = [i for i, label in enumerate(dataset.labels) if label in known]
        if len(keep) < len(dataset):
            log.info("dictionary classifier: %d of %d training images show one of its %d words (task.lexicon_size)",
                     len(keep), len(dataset), len(known))
        return dataset.subset(keep) if len(keep) < len(dataset) else dataset

    def lexicon(self) -> tuple[list[str], list[list[int]]]:
        """(words, their encodings) for task.decode=lexicon: task.lexicon (a word list, one per line), else the
        dataset's lexicon file; words the charset cannot write are left out."""
        if self._lexicon is None:
            from cvtool.data.word_annotations import read_lexicon

            path = self.cfg.get("lexicon") or (Path(self.dataset_cfg["root"]) / self.dataset_cfg["lexicon"]
                                               if self.dataset_cfg.get("lexicon") else None)
            if path is None:
                raise CvtoolError("task.decode=lexicon needs a word list", where="task.lexicon",
                                  fix="task.lexicon=PATH (one word per line)")
            words = []
            for word in dict.fromkeys(read_lexicon(path)):
                folded = self.charset.fold(word)
                if folded and all(c in self.charset.chars for c in folded):
                    words.append(folded)
            if not words:
                raise CvtoolError("no lexicon word can be written with task.charset", where=str(path),
                                  fix="check task.charset and task.case")
            self._lexicon = (words, [self.charset.encode(w) for w in words])
        return self._lexicon

    # --- building ----------------------------------------------------------------------------------------------
    def build_model(self, model_cfg: dict, num_classes: int) -> torch.nn.Module:
        """CRNN: a class per character + the CTC blank; the dictionary classifier: a class per word."""
        size = self.size
        model = registry_model(model_cfg, {**self.dataset_cfg, "image_size": list(size)},
                               num_classes if self.dictionary else num_classes + 1)
        stride = getattr(model, "frame_stride", None)
        if stride is not None and stride != self.frame_stride:
            raise CvtoolError(f"model {model_cfg['name']} emits a frame per {stride} columns, task.frame_stride is "
                              f"{self.frame_stride}", where="task.frame_stride", fix=f"task.frame_stride={stride}")
        return model

    def build_evaluator(self, dataset: WordSet):
        from cvtool.metrics.text import TextEvaluator

        return TextEvaluator(decode=self.decode)

    def trivial_baseline(self, evaluator) -> Baseline | None:
        """A model that reads nothing (an empty string for every image)."""
        from cvtool.metrics.text import empty_prediction_metrics

        metrics = empty_prediction_metrics(evaluator.targets)
        value = metrics
        for key in self.metric.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return None if value is None else Baseline(value, "empty prediction")

    # --- steps -------------------------------------------------------------------------------------------------
    def preprocess(self, batch, hardware: Hardware) -> dict:
        images, index, texts, labels = batch
        out = {"image": self.normalise(images, hardware), "index": index, "text": texts, "label": labels}
        if self.dictionary:
            classes = self.class_index
            out["target"] = torch.as_tensor([classes.get(label, -100) for label in labels],
                                            device=hardware.device)
        return out

    @property
    def class_index(self) -> dict[str, int]:
        return self._class_index

    def bind_classes(self, classes: list[str]) -> None:
        """The dictionary classifier's words (the training split's, or the checkpoint's)."""
        self._class_index = {word: i for i, word in enumerate(classes)}
        self.classes = list(classes)

    def batch_size(self, batch: dict) -> int:
        return batch["image"].shape[0]

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """CTC over the frames (CRNN), or cross-entropy over the lexicon words (dictionary classifier)."""
        logits = model(batch["image"]).float()
        if self.dictionary:
            return {"loss": F.cross_entropy(logits, batch["target"], label_smoothing=self.cfg["label_smoothing"])}
        from .ctc_decoding import ctc_loss

        return {"loss": ctc_loss(logits, [self.charset.encode(label) for label in batch["label"]])}

    def inference_step(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["image"]).float()

    def decode(self, logits: torch.Tensor) -> list[str]:
        """Recognised words: the dictionary classifier's top word; CRNN: best path (task.decode=greedy) or the
        lexicon word of highest CTC likelihood near it (task.decode=lexicon)."""
        return self.read(logits)[0]

    def read(self, logits: torch.Tensor) -> tuple[list[str], list[float]]:
        """(words, confidences): the classifier's softmax probability, or CTC's best-path probability."""
        if self.dictionary:
            probability, index = logits.float().softmax(dim=-1).max(dim=-1)
            return [self.classes[i] for i in index.tolist()], probability.tolist()
        from .ctc_decoding import greedy_decode, lexicon_decode

        paths, confidence = greedy_decode(logits)
        if self.cfg["decode"] == "lexicon":
            words, encoded = self.lexicon()
            picked = lexicon_decode(logits.float().log_softmax(dim=-1), paths, encoded,
                                    max_distance=self.cfg["lexicon_distance"])
            return [words[i] for i in picked], confidence.tolist()
        return [self.charset.decode(path) for path in paths], confidence.tolist()

    # --- results -----------------------------------------------------------------------------------------------
    def write_results(self, directory: Path, dataset: WordSet, logits: torch.Tensor, split: str) -> list[Path]:
        """pred.txt (`path<TAB>text`, what `cvtool eval predictions=` reads), predictions.csv (with confidence and
        the label when known) and, labels known, gt.txt beside them."""
        import csv
        import io

        from cvtool.data.word_annotations import write_text_file
        from cvtool.utils.atomic import atomic_write_text

        words, confidence = self.read(logits)
        files = [str(f) for f in dataset.files]
        known = any(dataset.texts)
        written = [write_text_file(directory / "pred.txt", zip(files, words))]
        rows = [["path", "text", "confidence", *(["label"] if known else [])]]
        rows += [[f, w, f"{c:.6f}", *([t] if known else [])] for f, w, c, t in zip(files, words, confidence,
                                                                                  dataset.texts)]
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        atomic_write_text(directory / "predictions.csv", text.getvalue())
        written.append(directory / "predictions.csv")
        if known:
            written.append(write_text_file(directory / "gt.txt", zip(files, dataset.texts)))
        return written

    def open_source(self, files: list[Path], transform, class_names: list[str], source: Path) -> WordSet:
        """Plain word images (labels unknown), stretched to dataset.image_size."""
        from cvtool.data.word_annotations import WordItem

        items = [WordItem(str(f), "", i + 1, str(source)) for i, f in enumerate(files)]
        dataset = WordSet(items, size=self.size, channels=self.dataset_cfg["channels"], source=str(source))
        dataset.classes = list(class_names)
        if self.dictionary:
            self.bind_classes(dataset.classes)
        dataset.transform = transform
        return dataset

    def ground_truth(self, dataset: WordSet, count: int) -> list[str]:
        """The first `count` labels (as written), drawn by `draw_overlays` like recognised words."""
        return list(dataset.texts[:count])

    def draw_overlays(self, directory: Path, dataset: WordSet, outputs, limit: int | None) -> int:
        """The first `limit` word images with the recognised word (and its confidence) beneath."""
        from PIL import Image

        from cvtool.viz.text_plots import overlay_word

        words, confidence = (outputs, [None] * len(outputs)) if isinstance(outputs, list) else self.read(outputs)
        directory.mkdir(parents=True, exist_ok=True)
        count = len(words) if limit is None else min(limit, len(words))
        for index in range(count):
            path = Path(dataset.files[index])
            with Image.open(path) as image:
                overlay_word(image.convert("RGB"), words[index], confidence[index]).save(
                    directory / f"{index:05d}_{path.stem}.png")
        return count

    # --- video -------------------------------------------------------------------------------------------------
    def frame_batch(self, frames: list[torch.Tensor], transform):
        """uint8 video frames (each one word crop) as the batch `preprocess` takes, stretched as the images are."""
        from torchvision.transforms.v2.functional import resize

        images = [resize(frame, list(self.size), antialias=True) for frame in frames]
        if transform is not None:
            images = [transform(image) for image in images]
        return torch.stack(images), torch.arange(len(frames)), [""] * len(frames), [""] * len(frames)

    def frame_results(self, frames: list[torch.Tensor], batch, logits: torch.Tensor, classes: list[str]) -> list:
        """Per frame: the recognised word and its confidence, and the frame with the word beneath."""
        from torchvision.transforms.v2.functional import to_pil_image

        from cvtool.viz.text_plots import overlay_word

        words, confidence = self.read(logits)
        return [({"text": w, "confidence": c}, overlay_word(to_pil_image(frame), w, c))
                for frame, w, c in zip(frames, words, confidence)]
