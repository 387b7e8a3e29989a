"""The datasets by name: ``--dataset NAME`` of every script and the runner (docs/datasets.md).

A new dataset is one module with a :class:`tool.dataset.DatasetInfo` subclass and one line here.
"""

from __future__ import annotations

import os

from coco14.dataset import COCO14
from folder.dataset import FolderDataset
from tool.cli import InputError
from tool.dataset import DatasetInfo
from voc12.dataset import VOC12

DATASETS: dict[str, type[DatasetInfo]] = {"voc12": VOC12, "coco14": COCO14, "folder": FolderDataset}


def dataset_class(name: str) -> type[DatasetInfo]:
    try:
        return DATASETS[name]
    except KeyError:
        raise InputError(f"--dataset {name!r}: unknown dataset, expected one of {', '.join(DATASETS)}") from None


def get_dataset(name: str, root: str | os.PathLike | None, check: bool = True) -> DatasetInfo:
    """The descriptor of dataset ``name`` in folder ``root`` (its default folder when None); ``check`` refuses a
    folder that is not of this dataset (:meth:`tool.dataset.DatasetInfo.check_root`)."""
    cls = dataset_class(name)
    root = root if root is not None else cls.default_root
    if root is None:
        raise InputError(f"--dataset {name} needs --dataset_root (there is no default folder)")
    info = cls(root)
    if check:
        info.check_root()
    return info
