"""Model registry and every registered model; importing this package registers them all.

The model modules are imported here explicitly, in one list, so ``from cvtool.models import create_model``
always sees every model (no registration by scattered import side effects).
"""

from cvtool.models import (  # noqa: F401  (imported for registration)
    crnn,
    dilated,
    embedding_net,
    fast_rcnn,
    fcn8s,
    lenet,
    overfeat,
    pose_heatmap,
    rcnn,
    se_resnet,
    segnet,
    small_cnn,
    torchvision_classifiers,
    torchvision_detectors,
    torchvision_segmenters,
    unet,
    xception,
    yolo,
)
from cvtool.models.registry import (
    ModelInfo,
    builder_kwargs,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = [
    "ModelInfo",
    "builder_kwargs",
    "count_parameters",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
