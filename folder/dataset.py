"""The descriptor of a folder of your own images, ``--dataset folder`` (docs/datasets.md#your-own-images).

Layout of ``--dataset_root``:

- ``images/<id>.jpg`` (or ``.jpeg``, ``.png``): any 8-bit image; grey, palette and RGBA images are read as RGB;
- ``classes.txt``: the foreground class names, one a line (any count >= 1; no spaces in a name);
- ``labels.txt``: ``<id> <class> <class> ...`` a line, classes by name or by 1-based index into ``classes.txt``;
  an id alone on its line has no foreground class;
- ``masks/<id>.png`` (optional, only for evaluation): class indices, 0 background, 255 ignored;
- ``train.txt``, ``val.txt``: the default lists (bare ids), or ``--train_list`` etc.

Every problem with these files is an :class:`InputError` naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tool.cli import InputError, MissingFileError
from tool.dataset import MAX_FG_CLASSES, DatasetInfo, pick_labels
from tool.fileio import load_cls_labels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Which list each script reads by default: the training images, the validation images (val.txt when there is one).
_LISTS = {
    "train_cls_ser": {"train_list": "train.txt", "val_list": "val.txt"},
    "infer_cls_ser": {"infer_list": "train.txt"},
    "train_aff": {"train_list": "train.txt"},
    "infer_aff": {"infer_list": "train.txt"},
    "train_seg": {"train_list": "train.txt"},
    "infer_seg": {"infer_list": "val.txt"},
    "evaluation": {"list": "train.txt"},
    "run_pipeline": {"train_list": "train.txt", "val_list": "val.txt", "eval_list": "train.txt"},
}


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a UTF-8 text file."""
    if not path.is_file():
        raise MissingFileError(f"{path}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_classes(path: Path) -> tuple[str, ...]:
    """The class names of ``classes.txt``, in order; duplicates, spaces and too many classes are refused."""
    names: list[str] = []
    for number, name in _lines(path):
        if len(name.split()) != 1:
            raise InputError(
                f"{path}:{number}: {name!r}: a class name may not contain spaces (labels.txt splits on them)"
            )
        if name in names:
            raise InputError(f"{path}:{number}: class {name!r} is listed twice (first on line {names.index(name) + 1})")
        if name.isdigit():
            raise InputError(f"{path}:{number}: class name {name!r} is a number; labels.txt reads numbers as indices")
        names.append(name)
    if not names:
        raise InputError(f"{path}: no class names; expected one foreground class name a line")
    if len(names) > MAX_FG_CLASSES:
        raise InputError(f"{path}: {len(names)} classes, at most {MAX_FG_CLASSES} fit 8-bit masks with 255 = ignore")
    return tuple(names)


def read_labels(path: Path, class_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``labels.txt`` as ``{id: (C,) float32 multi-hot}``; an unknown class or a repeated id names the line."""
    index = {name: k for k, name in enumerate(class_names)}
    labels: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    for number, line in _lines(path):
        image_id, *classes = line.split()
        if image_id in first_line:
            raise InputError(f"{path}:{number}: id {image_id!r} is listed twice (first on line {first_line[image_id]})")
        vector = np.zeros(len(class_names), np.float32)
        for token in classes:
            if token.isdigit() and 1 <= int(token) <= len(class_names):
                vector[int(token) - 1] = 1
            elif token in index:
                vector[index[token]] = 1
            else:
                known = ", ".join(class_names[:8]) + (", ..." if len(class_names) > 8 else "")
                raise InputError(
                    f"{path}:{number}: class {token!r} is not in classes.txt (names {known} or 1..{len(class_names)})"
                )
        labels[image_id] = vector
        first_line[image_id] = number
    return labels


class FolderDataset(DatasetInfo):
    name = "folder"
    default_root = None

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(root)
        self.class_names = read_classes(self.root / "classes.txt")
        self._images: dict[str, Path] | None = None

    def _image_index(self) -> dict[str, Path]:
        """``{id: path}`` of ``images/``, read once; two files of one id (``a.jpg``, ``a.png``) are refused."""
        if self._images is None:
            images: dict[str, Path] = {}
            for entry in sorted(os.scandir(self.root / "images"), key=lambda e: e.name):
                path = Path(entry.path)
                if not entry.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if path.stem in images:
                    raise InputError(f"{path}: id {path.stem!r} has two images ({images[path.stem].name} too)")
                images[path.stem] = path
            self._images = images
        return self._images

    def image_path(self, image_id: str) -> Path:
        # An id without an image gets the .jpg name, so the missing-file check names a plausible file.
        return self._image_index().get(image_id, self.root / "images" / f"{image_id}.jpg")

    def mask_path(self, image_id: str) -> Path:
        return self.root / "masks" / f"{image_id}.png"

    def check_root(self) -> None:
        super().check_root()
        if not (self.root / "images").is_dir():
            raise MissingFileError(f"--dataset_root {self.root}: no images/ folder (the folder dataset's layout)")

    def load_labels(self, ids: Iterable[str], cls_labels: str | os.PathLike | None) -> dict[str, np.ndarray]:
        """From ``labels.txt``, or from the label file ``cls_labels`` when one is given."""
        if cls_labels is not None:
            source = f"--cls_labels {cls_labels}"
            labels = load_cls_labels(cls_labels, self.num_fg_classes)
        else:
            source = str(self.root / "labels.txt")
            labels = read_labels(self.root / "labels.txt", self.class_names)
        return pick_labels(labels, ids, source)

    @classmethod
    def flag_defaults(cls, script: str, root: Path | None) -> dict[str, Any]:
        defaults = super().flag_defaults(script, root)
        if root is None:  # reported when the descriptor is built: --dataset folder needs --dataset_root
            return defaults
        lists = {flag: Path(root) / name for flag, name in _LISTS.get(script, {}).items()}
        if "val_list" in lists and not lists["val_list"].is_file():
            lists["val_list"] = ""  # no val.txt: no validation
        return {**defaults, **lists, "cls_labels": None}
