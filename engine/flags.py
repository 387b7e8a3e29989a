"""The command-line flags several scripts share, in groups: one declaration each.

Every script's ``get_args_parser`` calls these; the flag types and the exit path
for bad values live in :mod:`tool.cli`. Defaults and help texts that differ per
script are parameters.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from engine.datasets import DATASETS, get_dataset
from tool import cli
from tool.dataset import DatasetInfo

PICKLE_WARNING = "unpickling can run arbitrary code stored in a file, so use it only on files you trust"


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose defaults follow ``--dataset`` (docs/datasets.md).

    The published defaults are VOC's. Where a flag is not given on the command line, the default of the dataset
    named by ``--dataset`` for this ``script`` (:meth:`tool.dataset.DatasetInfo.flag_defaults`: its lists, its
    label file, its flag values) replaces it; a flag given explicitly always wins.
    """

    def __init__(self, *args, script: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.script = script

    def parse_known_args(self, args=None, namespace=None):
        dataset = None
        if namespace is None and any(a.dest == "dataset" for a in self._actions):
            dataset, defaults = self._dataset_defaults(args)
            namespace = argparse.Namespace(**defaults)
        parsed, extras = super().parse_known_args(args, namespace)
        if dataset is not None and getattr(parsed, "dataset", dataset) != dataset:
            self.error(f"write --dataset {parsed.dataset} in full (an abbreviation hides it from the defaults)")
        return parsed, extras

    def _dataset_defaults(self, args) -> tuple[str, dict]:
        """The dataset named on the command line (``args`` or ``sys.argv``) and its defaults for this script."""
        peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        peek.add_argument("--dataset", default=self.get_default("dataset"))
        peek.add_argument("--dataset_root", "--voc12_root", dest="dataset_root")
        known = peek.parse_known_args(args)[0]
        if known.dataset not in DATASETS:
            return known.dataset, {}  # argparse itself reports the bad choice
        root = None if known.dataset_root is None else Path(known.dataset_root)
        defaults = DATASETS[known.dataset].flag_defaults(self.script, root)
        dests = {action.dest for action in self._actions}
        return known.dataset, {k: v for k, v in defaults.items() if k in dests}


def add_dataset_flags(parser: argparse.ArgumentParser) -> None:
    """``--dataset`` (a name of :data:`engine.datasets.DATASETS`) and ``--dataset_root`` (alias ``--voc12_root``)."""
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="voc12",
        help="dataset: voc12 (PASCAL VOC 2012), coco14 (COCO-2014) or folder (your own images); its lists, "
        "labels and defaults replace the VOC ones where a flag is not given (docs/datasets.md)",
    )
    parser.add_argument(
        "--dataset_root",
        "--voc12_root",
        dest="dataset_root",
        help="dataset folder (--voc12_root: the published spelling); default: VOC2012 for voc12, COCO2014 for coco14",
    )


def dataset_of(args: argparse.Namespace, check: bool = True) -> DatasetInfo:
    """The descriptor of ``--dataset`` in ``--dataset_root``; ``check``: refuse a folder of another dataset."""
    return get_dataset(args.dataset, args.dataset_root, check)


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
) -> None:
    """The dataset flags (:func:`add_dataset_flags`) and, when ``list_flag`` is given (e.g. ``--infer_list``), the
    image list flag (default: ``list_default`` for VOC, the dataset's list otherwise)."""
    add_dataset_flags(parser)
    if list_flag:
        parser.add_argument(list_flag, default=list_default, help=f"{list_help} (default for voc12: {list_default})")


def add_val_list_flag(parser: argparse.ArgumentParser, default: str, help: str) -> None:
    """``--val_list``: the images a training script scores after each epoch (``''`` skips validation)."""
    parser.add_argument("--val_list", default=default, help=f"{help} ('' skips validation)")


def add_cls_labels_flag(parser: argparse.ArgumentParser) -> None:
    """``--cls_labels``: the image-level label file (default: the dataset's)."""
    parser.add_argument(
        "--cls_labels",
        default="voc12/cls_labels.npz",
        help="image-level label file (.npz; docs/formats.md#label-cache); default: the dataset's "
        "(voc12/cls_labels.npz, read from the XML for ids it lacks; coco14/cls_labels.npz; folder: labels.txt)",
    )


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
