"""embedding_net: any registered classifier as the trunk of an embedding network (Siamese / triplet training): its
last linear layer gives way to an embedding head, L2-normalised by default."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from cvtool.errors import CvtoolError
from cvtool.models.registry import create_model, list_models, model_info, register_model


class EmbeddingNet(nn.Module):
    """trunk (a classifier whose last nn.Linear is an Identity) -> Linear(features, dim) [-> BatchNorm1d] -> L2
    normalisation (`normalize`). `classifier` (Linear(dim, num_classes), or None) serves only the softmax baseline,
    through `forward(x, with_logits=True)`; `explained_layer` names the trunk's own `explained_layer` where it has
    one, else its last convolution (Grad-CAM's layer)."""

    def __init__(self, trunk: nn.Module, features: int, dim: int, *, normalize: bool, head_bn: bool,
                 num_classes: int | None):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Sequential(nn.Linear(features, dim), *([nn.BatchNorm1d(dim)] if head_bn else []))
        self.normalize = normalize
        self.classifier = nn.Linear(dim, num_classes) if num_classes else None
        convs = [name for name, module in trunk.named_modules() if isinstance(module, nn.Conv2d)]
        explained = getattr(trunk, "explained_layer", None) or (convs[-1] if convs else None)
        self.explained_layer = f"trunk.{explained}" if explained else None

    def forward(self, x: Tensor, with_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, dim) embeddings: unit-length rows when `normalize`; `with_logits`: also the classifier's (B,
        num_classes) class scores of the head's output before normalisation (the softmax baseline; one forward, so
        DDP sees it)."""
        features = self.head(self.trunk(x))
        embeddings = F.normalize(features, dim=1) if self.normalize else features
        if not with_logits:
            return embeddings
        if self.classifier is None:
            raise CvtoolError("this embedding_net has no classifier for class scores", where="model.classifier",
                              fix="set model.classifier=true (the softmax baseline, task.loss=softmax, needs it)")
        return embeddings, self.classifier(features)


def replace_last_linear(model: nn.Module) -> nn.Linear | None:
    """Swap the last nn.Linear of `model` (in module order) for nn.Identity; returns the removed layer (None: no
    nn.Linear)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        return None
    parent, _, child = names[-1].rpartition(".")
    owner = model.get_submodule(parent)
    last = getattr(owner, child)
    setattr(owner, child, nn.Identity())
    return last


def _classifier_trunk(trunk: str) -> None:
    """Refuse a trunk that is not a registered classifier."""
    task = model_info(trunk).task
    if task != "classification":
        raise CvtoolError(f"model.trunk={trunk} is a {task} model, not a classifier", where="model.trunk",
                          fix=f"use a classifier: {', '.join(list_models(task='classification'))}")


# min_size 1: the trunk's own smallest input is checked when input_size is known
@register_model("embedding_net", task="embedding", min_size=1,
                description="a registered classifier as trunk + linear embedding head, L2-normalised "
                            "(Siamese / triplet networks)")
def embedding_net(num_classes: int, in_channels: int = 3, weights: str | None = None, trunk: str = "shapes_cnn",
                  trunk_options: Mapping[str, object] | None = None, dim: int = 128, normalize: bool = True,
                  head_bn: bool = True, classifier: bool = False,
                  input_size: int | tuple[int, int] | list[int] | None = None) -> EmbeddingNet:
    """`trunk` built with `trunk_options` (its own options, e.g. small_input or pretrained weights=DEFAULT), its
    last linear layer replaced by a `dim`-wide embedding head; `classifier`: add Linear(dim, num_classes) for the
    softmax baseline. `weights`: a local file only (create_model loads it); `input_size` is checked by the trunk."""
    if weights is not None:
        raise CvtoolError(f"model embedding_net has no pretrained weights named {weights!r}", where="model.weights",
                          fix="pretrained trunk weights go in model.trunk_options (e.g. model.trunk=resnet18 "
                              "+model.trunk_options.weights=DEFAULT); model.weights takes a local .pt file")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise CvtoolError(f"model.dim must be an integer >= 1, got {dim!r}", where="model.dim",
                          fix="e.g. model.dim=128")
    _classifier_trunk(trunk)
    options = {"input_size": input_size, **(trunk_options or {})}
    body = create_model(trunk, num_classes=1, in_channels=in_channels, **options)
    last = replace_last_linear(body)
    if last is None:
        raise CvtoolError(f"model.trunk={trunk} has no linear layer to replace by the embedding head",
                          where="model.trunk", fix="use a classifier ending in nn.Linear, e.g. shapes_cnn or resnet18")
    return EmbeddingNet(body, last.in_features, dim, normalize=normalize, head_bn=head_bn,
                        num_classes=num_classes if classifier else None)
