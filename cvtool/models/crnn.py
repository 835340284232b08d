"""Text recognition models (task=text) for cropped word images: crnn (Shi, Bai & Yao 2015), per-frame character
scores for CTC, and word_classifier (Jaderberg et al. 2016), one class per lexicon word."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from cvtool.errors import CvtoolError
from cvtool.models.embedding_net import _classifier_trunk
from cvtool.models.registry import create_model, register_model
from cvtool.models.small_cnn import _conv_bn_relu
from cvtool.models.weights import reject_weights_name

DEFAULT_SIZE = (32, 100)  # (H, W): dataset.image_size of the text datasets
HEIGHT_STEP = 16  # both CNNs halve the height four times
# (channels as a multiple of `width`, max-pool after the conv or None): Shi et al.'s VGG layout; the (2, 1) pools
# collapse the height and keep the width, so a frame is 4 input columns
CRNN_STAGES = ((1, (2, 2)), (2, (2, 2)), (4, None), (4, (2, 1)), (8, None), (8, (2, 1)))
# Jaderberg et al.'s conv stages (3x3 here), pooled to H/16 x W/16 so the flattened map stays small for CPUs
WORD_STAGES = ((1, (2, 2)), (2, (2, 2)), (4, None), (4, (2, 2)), (8, (2, 2)))


def _conv_stack(in_channels: int, width: int, stages: Sequence[tuple[int, tuple[int, int] | None]]) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU per stage, each followed by its max-pool where it has one."""
    layers: list[nn.Module] = []
    for multiple, pool in stages:
        layers += _conv_bn_relu(in_channels, multiple * width)
        layers += [nn.MaxPool2d(pool)] if pool else []
        in_channels = multiple * width
    return nn.Sequential(*layers)


def _positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CvtoolError(f"model.{key} must be an integer >= 1, got {value!r}", where=f"model.{key}",
                          fix=f"e.g. model.{key}=32")
    return value


def _image_size(input_size: int | Sequence[int] | None, model: str, width_step: int) -> tuple[int, int]:
    """(H, W) of the inputs (default 32 x 128); refuses a height the CNN cannot collapse to whole rows and a width
    that is not a multiple of `width_step` (the input columns per output position)."""
    if input_size is None:
        return DEFAULT_SIZE
    height, width = (input_size, input_size) if isinstance(input_size, int) else (int(v) for v in input_size)
    if height < HEIGHT_STEP or height % HEIGHT_STEP or width % width_step:
        raise CvtoolError(f"model {model} needs an image height that is a multiple of {HEIGHT_STEP} and a width that "
                          f"is a multiple of {width_step}, got {height} x {width}", where="dataset.image_size",
                          fix="e.g. dataset.image_size=[32,128]")
    return height, width


def _check_input(x: Tensor, height: int, width: int, model: str) -> None:
    """Refuse inputs whose height (and width, when `width` > 0) differs from the one the model was built for."""
    if x.shape[-2] != height or (width > 0 and x.shape[-1] != width):
        built = f"{height} x {width}" if width > 0 else f"{height} px high"
        raise CvtoolError(f"model {model} was built for {built} inputs, got {x.shape[-2]} x {x.shape[-1]}",
                          where="model input",
                          fix="resize the images to the dataset.image_size the model was trained with")


class CRNN(nn.Module):
    """CNN -> each output column (channels x remaining rows) is one frame -> `layers` bidirectional LSTMs ->
    Linear: N x C x H x W images give N x (W // 4) x num_classes logits (class 0: the CTC blank)."""

    def __init__(self, in_channels: int, num_classes: int, *, height: int, width: int, hidden: int, layers: int,
                 dropout: float):
        super().__init__()
        self.height = height
        self.frame_stride = 4  # input columns per output frame
        self.features = _conv_stack(in_channels, width, CRNN_STAGES)
        frame_size = CRNN_STAGES[-1][0] * width * (height // HEIGHT_STEP)
        self.rnn = nn.LSTM(frame_size, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.height, 0, "crnn")
        frames = self.features(x).permute(0, 3, 1, 2).flatten(2)  # N x T x (C * rows)
        return self.classifier(self.dropout(self.rnn(frames)[0]))


@register_model("crnn", task="text", min_size=32,
                description="CRNN (Shi et al. 2015): VGG-style CNN + bidirectional LSTMs, per-frame character "
                            "scores for CTC (T = W / 4 frames)")
def crnn(num_classes: int, in_channels: int = 3, weights: str | None = None,
         input_size: int | Sequence[int] | None = None, width: int = 16, hidden: int = 128, layers: int = 1,
         dropout: float = 0.0) -> CRNN:
    """`width`: channels of the first conv (the stages have 1, 2, 4, 4, 8, 8 x as many); `hidden`: LSTM units per
    direction; `layers`: stacked bidirectional LSTMs; `dropout`: between the LSTMs and before the classifier.
    The input height (`input_size`, default 32) fixes the frame size: a multiple of 16. `weights`: a local file
    only (create_model loads it)."""
    reject_weights_name("crnn", weights)
    height, _ = _image_size(input_size, "crnn", 4)
    return CRNN(in_channels, num_classes, height=height, width=_positive_int(width, "width"),
                hidden=_positive_int(hidden, "hidden"), layers=_positive_int(layers, "layers"), dropout=dropout)


class WordCNN(nn.Module):
    """Jaderberg et al.'s dictionary network, smaller: conv stages -> the whole H/16 x W/16 map flattened (it keeps
    where each letter is, which a global pool would lose) -> Linear(hidden) -> ReLU -> dropout -> Linear."""

    def __init__(self, in_channels: int, num_classes: int, *, size: tuple[int, int], width: int, hidden: int,
                 dropout: float):
        super().__init__()
        self.height, self.width = size
        self.features = _conv_stack(in_channels, width, WORD_STAGES)
        columns = self.width
        for _, pool in WORD_STAGES:
            columns //= pool[1] if pool else 1
        flat = WORD_STAGES[-1][0] * width * (self.height // HEIGHT_STEP) * columns
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.height, self.width, "word_classifier")
        return self.head(self.features(x))


@register_model("word_classifier", task="text", min_size=16,
                description="dictionary word classifier (Jaderberg et al. 2016): one class per lexicon word; "
                            "its own CNN or a registered classifier as trunk")
def word_classifier(num_classes: int, in_channels: int = 3, weights: str | None = None,
                    input_size: int | Sequence[int] | None = None, trunk: str | None = None,
                    trunk_options: Mapping[str, object] | None = None, width: int = 16, hidden: int = 512,
                    dropout: float = 0.0) -> nn.Module:
    """num_classes = lexicon size. `trunk` None: WordCNN for `input_size` (default 32 x 128; sides multiples of
    16) with `width`, `hidden` and `dropout`; else that registered classifier, built with num_classes and
    `trunk_options` (its own options, e.g. pretrained weights). `weights`: a local file only."""
    if weights is not None:
        raise CvtoolError(f"model word_classifier has no pretrained weights named {weights!r}",
                          where="model.weights", fix="pretrained trunk weights go in model.trunk_options (e.g. "
                          "model.trunk=resnet18 +model.trunk_options.weights=DEFAULT); model.weights takes a local "
                          ".pt file")
    if trunk is not None:
        _classifier_trunk(trunk)
        return create_model(trunk, num_classes=num_classes, in_channels=in_channels,
                            **{"input_size": input_size, **(trunk_options or {})})
    if trunk_options:
        raise CvtoolError("model.trunk_options needs a model.trunk", where="model.trunk_options",
                          fix="set model.trunk=NAME (a classifier) or leave trunk_options empty")
    size = _image_size(input_size, "word_classifier", 1)
    return WordCNN(in_channels, num_classes, size=size, width=_positive_int(width, "width"),
                   hidden=_positive_int(hidden, "hidden"), dropout=dropout)
