"""The command-line flags several scripts share, in groups: one declaration each.

Every script's ``get_args_parser`` calls these; the flag types and the exit path
for bad values live in :mod:`tool.cli`. Defaults and help texts that differ per
script are parameters.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from tool import cli

PICKLE_WARNING = "unpickling can run arbitrary code stored in a file, so use it only on files you trust"


def add_network_flags(
    parser: argparse.ArgumentParser,
    default: str,
    network_help: str = "network module, dotted name",
    width_help: str = "channel width multiplier the weights were trained with",
) -> None:
    """``--network`` (a module of :mod:`network`, dotted name) and ``--width_mult``."""
    parser.add_argument("--network", default=default, help=network_help)
    parser.add_argument("--width_mult", type=cli.width_mult, default=1.0, help=width_help)


def add_weights_flag(parser: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    """``--weights``: the file the network loads (required for inference, an init for training)."""
    parser.add_argument("--weights", required=required, help=help)


def add_data_flags(
    parser: argparse.ArgumentParser,
    list_flag: str | None = None,
    list_default: str = "voc12/train.txt",
    list_help: str = "list of images to process",
    root_help: str = "VOC2012 devkit folder (JPEGImages, ...)",
) -> None:
    """``--voc12_root`` and, when ``list_flag`` is given (e.g. ``--infer_list``), the image list flag."""
    if list_flag:
        parser.add_argument(list_flag, default=list_default, help=list_help)
    parser.add_argument("--voc12_root", default="VOC2012", help=root_help)


def add_cls_labels_flag(parser: argparse.ArgumentParser, help: str = "image-level label cache (.npz)") -> None:
    parser.add_argument("--cls_labels", default="voc12/cls_labels.npz", help=help)


def add_num_workers_flag(
    parser: argparse.ArgumentParser,
    default: int | None = None,
    help: str = "DataLoader worker processes per rank (default 8, at most the usable CPUs)",
) -> None:
    """``--num_workers``; ``default`` None = 8 capped at the usable CPUs (:func:`tool.cli.default_workers`)."""
    default = cli.default_workers(8) if default is None else default
    parser.add_argument("--num_workers", type=cli.worker_count, default=default, help=help)


def add_scales_flag(parser: argparse.ArgumentParser, default: tuple[float, ...], help: str) -> None:
    """``--scales``: the input scales of a multi-scale inference (``help`` says what is done with them)."""
    parser.add_argument(
        "--scales",
        type=cli.float_range(0, 4, lo_open=True),
        nargs="+",
        default=list(default),
        help=f"input scales in (0, 4], {help}",
    )


def add_range_flag(
    parser: argparse.ArgumentParser, flag: str, value_type: Callable[[str], float], default: tuple, help: str
) -> None:
    """A flag of two values ``LOW HIGH`` with LOW <= HIGH (checked by :class:`tool.cli.OrderedPair`)."""
    parser.add_argument(
        flag, type=value_type, nargs=2, default=default, metavar=("LOW", "HIGH"), action=cli.OrderedPair, help=help
    )


def add_overwrite_flag(
    parser: argparse.ArgumentParser, help: str = "recompute images whose outputs all exist already"
) -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_allow_pickle_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--allow_pickle``: also read the reference's pickled ``<id>.npy`` files (``what`` says which)."""
    parser.add_argument("--allow_pickle", action="store_true", help=f"also read {what}; {PICKLE_WARNING}")


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--amp`` (the AMP rule itself: :func:`tool.torchutils.autocast`)."""
    parser.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument(
        "--amp", action="store_true", help="CUDA mixed precision (torch.autocast float16); off = the reference"
    )
