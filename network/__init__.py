"""Networks: the ResNet38 backbone and its SSENet (CAM) and AffinityNet heads."""

import importlib


def build_network(name: str, width_mult: float = 1.0):
    """``Net(width_mult)`` of the module named by ``--network`` (e.g. ``network.resnet38_cls_ser``)."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise SystemExit(f"--network {name}: no such module ({e})") from None
    if not hasattr(module, "Net"):
        raise SystemExit(f"--network {name}: module has no Net class")
    return module.Net(width_mult=width_mult)
