"""The one weight loader of every script: ``--weights`` by file type (docs/formats.md).

ImageNet files are read by the backbone's own readers (:attr:`network.backbone.Backbone.weight_readers`:
MXNet ``.params`` for ResNet38 through ``network.resnet38d.convert_mxnet_to_torch``, Caffe ``.caffemodel`` for
VGG16 through ``network.vgg16d.convert_caffe_to_torch``), which map their names onto ours; ``.pth`` / ``.pt``
state dicts, ours or released ones, are read for every network (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from tool import torchutils
from tool.cli import InputError, MissingFileError

logger = logging.getLogger(__name__)


def read_state_dict(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` under our names: an ImageNet file through ``model``'s reader for its suffix, else
    a torch state dict (a resumable checkpoint's ``model``; a DataParallel ``module.`` prefix removed)."""
    readers = type(model).weight_readers
    if path.suffix in readers:
        try:
            return readers[path.suffix](path)
        except KeyError as e:  # a parameter name with no counterpart in this backbone
            raise InputError(f"--weights {e.args[0]}") from None
        except ValueError as e:  # MXNetParamsError, CaffeModelError (truncated or foreign file): they name the file
            raise InputError(f"--weights {e}") from None
    if path.suffix in (".params", ".caffemodel"):
        kinds = ", ".join(sorted(readers)) or "none"
        raise InputError(
            f"--weights {path}: {type(model).__module__} reads .pth state dicts and ImageNet files {kinds}, "
            f"not {path.suffix} (weights of another backbone?)"
        )
    obj = torchutils.load_torch_file(path, "--weights")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a resumable training checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"--weights {path}: expected a state dict (name -> tensor)")
    # DataParallel / DDP checkpoints carry a "module." prefix.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _check_class_count(model: nn.Module, path: Path, key: str, shape: torch.Size) -> None:
    """Refuse, in one line naming both counts, a checkpoint whose class head has another class count."""
    num_classes = getattr(model, "num_classes", None)
    own = model.state_dict()[key].shape
    head_prefixes = tuple(f"{n}." for n in model.new_layer_names)
    same_input = len(shape) == len(own) and tuple(shape[1:]) == tuple(own[1:])
    if num_classes is not None and key.startswith(head_prefixes) and own[0] == num_classes and same_input:
        raise InputError(
            f"--weights {path}: its head ({key}) has {shape[0]} classes, this network {num_classes} "
            "(weights of another --dataset?)"
        )


def load_weights(model: nn.Module, path: str | Path, allow_missing_head: bool = True) -> None:
    """Load ``--weights`` into ``model`` (any of our networks): MXNet ``.params``, Caffe
    ``.caffemodel`` or a ``.pth``/``.pt`` state dict.

    Accepted: our checkpoints, released PyTorch 0.4 ones (no ``num_batches_tracked``),
    ``module.``-prefixed DataParallel ones, and backbone-only files (ImageNet init).
    The ImageNet files (``.params``, ``.caffemodel``) never provide head weights:
    layers of theirs named like one of the model's heads are reported and ignored.
    Every backbone weight must be present. Head weights may be missing only when
    ``allow_missing_head`` (training from ImageNet weights); weights of another
    head (e.g. ``fc8`` when loading into AffinityNet) are reported and ignored.
    Raises InputError (a ValueError) naming the file on a shape mismatch, a missing weight or an unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--weights: file not found: {path}")
    state_dict = read_state_dict(path, model)
    own = model.state_dict()
    head_prefixes = tuple(f"{n}." for n in (*model.new_layer_names, *getattr(model, "head_layer_names", ())))
    if path.suffix in type(model).weight_readers:
        foreign_head = sorted(k for k in state_dict if k.startswith(head_prefixes))
        if foreign_head:
            logger.info("%s: ignored the ImageNet file's %s (our head starts from scratch)", path, foreign_head)
            state_dict = {k: v for k, v in state_dict.items() if k not in foreign_head}

    unexpected = sorted(k for k in state_dict if k not in own)
    state_dict = {k: v for k, v in state_dict.items() if k in own}
    for k, v in state_dict.items():
        if v.shape != own[k].shape:
            _check_class_count(model, path, k, v.shape)
            raise InputError(
                f"--weights {path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)} "
                "(another --width_mult or --network?)"
            )
    missing = sorted(k for k in own if k not in state_dict and not k.endswith("num_batches_tracked"))
    missing_backbone = [k for k in missing if not k.startswith(head_prefixes)]
    missing_head = [k for k in missing if k.startswith(head_prefixes)]
    if missing_backbone:
        raise InputError(
            f"--weights {path}: {len(missing_backbone)} backbone weights missing (e.g. {missing_backbone[:3]}); "
            f"is this a checkpoint of {type(model).__module__} at the same width?"
        )
    if missing_head and not allow_missing_head:
        raise InputError(f"--weights {path}: head weights missing: {missing_head} (weights of another stage?)")
    model.load_state_dict(state_dict, strict=False)
    logger.info("loaded %s: %d tensors", path, len(state_dict))
    if missing_head:
        logger.info("head layers left at their initialisation: %s", missing_head)
    if unexpected:
        logger.info("ignored weights not in this model: %s", unexpected)
