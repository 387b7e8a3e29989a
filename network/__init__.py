"""Networks: the ResNet38 and VGG16 backbones and their SSENet (CAM), AffinityNet and segmentation heads."""

import importlib


def build_network(name: str, width_mult: float = 1.0, num_classes: int | None = None):
    """``Net(width_mult, num_classes=...)`` of the module named by ``--network`` (e.g. ``network.resnet38_cls_ser``).

    ``num_classes`` is what the head outputs (a CAM head: the dataset's foreground classes; a segmentation head:
    with background); None for a head without classes (AffinityNet) or the module's own default.
    """
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise SystemExit(f"--network {name}: no such module ({e})") from None
    if not hasattr(module, "Net"):
        raise SystemExit(f"--network {name}: module has no Net class")
    if num_classes is None:
        return module.Net(width_mult=width_mult)
    return module.Net(width_mult=width_mult, num_classes=num_classes)
