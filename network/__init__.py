"""Networks: backbones (:mod:`network.backbone`: ResNet38, VGG16) and the heads on them (:mod:`network.heads`)."""

import importlib

from network.heads import compose


def build_network(name: str, width_mult: float = 1.0, num_classes: int | None = None, head: str | None = None):
    """The network of ``--network name`` at ``width_mult`` with ``num_classes`` outputs.

    ``name`` is a module with a ``Net`` (or ``Backbone``) class. A class with head layers (``new_layer_names``:
    ``network.resnet38_cls_ser``) is built as it is; a bare backbone (:class:`network.backbone.Backbone`,
    e.g. ``network.resnet38d`` or a backbone file of your own) gets the generic head of kind ``head`` (``cam``,
    ``aff`` or ``seg``: :func:`network.heads.compose`). ``num_classes`` is what the head outputs (a CAM head: the
    dataset's foreground classes; a segmentation head: with background); None for AffinityNet or the default.
    """
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise SystemExit(f"--network {name}: no such module ({e})") from None
    net = getattr(module, "Net", None) or getattr(module, "Backbone", None)
    if net is None:
        raise SystemExit(f"--network {name}: the module has no Net (or Backbone) class")
    if not getattr(net, "new_layer_names", ()):  # a bare backbone: this script's head goes on it
        if head is None:
            raise SystemExit(f"--network {name}: a backbone without a head, and this script names none")
        net = compose(net, head)
    if num_classes is None:
        return net(width_mult=width_mult)
    return net(width_mult=width_mult, num_classes=num_classes)
