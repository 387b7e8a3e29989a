"""What the pipeline needs to know about a dataset: the descriptor contract, image lists, the colour map.

One :class:`DatasetInfo` subclass per dataset (``voc12.dataset.VOC12``, ``coco14.dataset.COCO14``,
``folder.dataset.FolderDataset``), one instance per dataset folder. It says which foreground classes
there are (background is mask index 0, :data:`IGNORE_INDEX` is ignored), where the image and the
ground-truth mask of an id are, where the image-level labels come from, the default lists and any
per-dataset flag defaults of the scripts (docs/datasets.md). Everything that depends on the class count
(network heads, score-file checks, evaluation, palette PNGs, figures) asks the descriptor; the names are
looked up in ``engine.datasets``.

Image lists (docs/formats.md#list-files) are dataset-independent: a bare id per line, or the published
``/JPEGImages/<id>.jpg`` form.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tool.cli import InputError, MissingFileError, OutputExistsError
from tool.fileio import atomic_write_text, load_cls_labels
from tool.metrics import IGNORE_INDEX

logger = logging.getLogger(__name__)

# A label PNG holds 8-bit class indices and 255 is "ignore": at most 254 foreground classes.
MAX_FG_CLASSES = IGNORE_INDEX - 1


def color_map(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, (n, 3) uint8: the bits of the class index interleaved into R, G and B.

    Defined for any index, so it serves every dataset (index 0, background, is black)."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


# --------------------------------------------------------------------------- image lists

# The one grammar of list lines (docs/formats.md#list-files): a bare id, or the published
# "/JPEGImages/<id>.jpg" optionally followed by "/SegmentationClassAug/<id>.png" of the same id.
_LIST_LINE = re.compile(
    r"(?P<bare>[^\s/#][^\s/]*)"
    r"|/JPEGImages/(?P<id>[^\s/]+)\.jpg(?:[ \t]+/SegmentationClassAug/(?P=id)\.png)?"
)
LIST_LINE_GRAMMAR = "a bare image id, or '/JPEGImages/<id>.jpg' optionally followed by '/SegmentationClassAug/<id>.png'"


class ListFileError(InputError):
    """A list file that cannot be read or has a line outside the grammar; the message names file and line."""


def parse_list_line(line: str, where: str = "list line") -> str:
    """Image id of one list line (surrounding whitespace ignored); raises :class:`ListFileError` naming ``where``."""
    match = _LIST_LINE.fullmatch(line.strip())
    if match is None:
        raise ListFileError(f"{where}: {line.strip()!r} is not {LIST_LINE_GRAMMAR}")
    return match.group("bare") or match.group("id")


def load_img_id_list(list_path: str | os.PathLike, duplicates: str = "error") -> list[str]:
    """Image ids of a list file, in order; blank lines are skipped.

    ``duplicates``: ``"error"`` (evaluation, training: an image would count twice),
    ``"warn"`` (inference: log a warning and keep the first) or ``"drop"`` (keep the
    first silently, for a second read of a list the caller already checked).
    """
    path = Path(list_path)
    if not path.is_file():
        raise MissingFileError(f"image list not found: {path}")
    ids: list[str] = []
    first_line: dict[str, int] = {}
    repeated: list[tuple[str, int]] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ListFileError(f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not line.strip():
            continue
        image_id = parse_list_line(line, f"{path}:{number}")
        if image_id in first_line:
            repeated.append((image_id, number))
            continue
        first_line[image_id] = number
        ids.append(image_id)
    if not ids:
        raise ListFileError(f"image list {path} is empty")
    if repeated:
        image_id, number = repeated[0]
        what = f"{len(repeated)} duplicate id(s), first {image_id!r} on lines {first_line[image_id]} and {number}"
        if duplicates == "error":
            raise ListFileError(f"{path}: {what}; each image may appear once")
        if duplicates == "warn":
            logger.warning("%s: %s; each is processed once", path, what)
    return ids


def _read_ids(path: Path) -> list[str]:
    """Ids of an existing list file, repeats kept; a line outside the grammar (or not UTF-8) names the line."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [parse_list_line(line, f"{path}:{n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def list_file(list_dir: str | os.PathLike, name: str) -> Path:
    """``<list_dir>/<name>.txt``: where a list called ``name`` (train, val, ...) lives in a folder of lists."""
    return Path(list_dir) / f"{name}.txt"


def write_lists(list_dir: str | os.PathLike, lists: dict[str, list[str]], overwrite: bool = False) -> list[Path]:
    """Write ``<list_dir>/<name>.txt`` (one bare id a line); returns the files written.

    An existing file listing the same ids (either line style) is left as it is. One listing other ids is an
    error unless ``overwrite``; all files are checked before any is written.
    """
    list_dir = Path(list_dir)
    pending = {}
    for name, ids in lists.items():
        path = list_file(list_dir, name)
        if path.exists():
            if _read_ids(path) == ids:
                continue
            if not overwrite:
                raise OutputExistsError(f"{path} exists with different ids; pass --overwrite to replace it")
        pending[path] = ids
    for path, ids in pending.items():
        atomic_write_text(path, "".join(f"{image_id}\n" for image_id in ids))
    return list(pending)


# --------------------------------------------------------------------------- the descriptor


class DatasetInfo:
    """One dataset folder, as the pipeline sees it. Subclasses set the class attributes and the path methods.

    - ``class_names``: the foreground classes in label-vector order (vector index k is mask index k + 1);
    - ``default_root``: ``--dataset_root`` when none is given (None: the flag is required);
    - :meth:`image_path`, :meth:`mask_path`: the files of an id;
    - :meth:`load_labels`: the image-level labels of ids, ``{id: (C,) float32 multi-hot}``;
    - :meth:`flag_defaults`: the defaults of a script's flags that differ from the published VOC ones;
    - :meth:`check_root`: refuse a folder that is not of this dataset, before any work.
    """

    name: ClassVar[str] = ""
    class_names: tuple[str, ...] = ()
    default_root: ClassVar[str | None] = None

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ classes

    @property
    def num_fg_classes(self) -> int:
        """Foreground classes: the length of an image-level label and the output count of a CAM head."""
        return len(self.class_names)

    @property
    def num_classes(self) -> int:
        """Classes of a mask (background + foreground): the output count of a segmentation head."""
        return len(self.class_names) + 1

    @property
    def names_with_background(self) -> tuple[str, ...]:
        return ("background", *self.class_names)

    @property
    def palette(self) -> np.ndarray:
        """(256, 3) uint8 colours of the label PNGs (the VOC colour map)."""
        return color_map()

    # ------------------------------------------------------------------ files

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path:
        """The ground-truth mask PNG of ``image_id`` (class indices, 255 ignored); it may not exist."""
        raise NotImplementedError

    def check_root(self) -> None:
        """Raise :class:`InputError` when ``root`` does not look like this dataset (default: it must exist)."""
        if not self.root.is_dir():
            raise MissingFileError(f"--dataset_root {self.root}: not a folder ({self.name} expected)")

    # ------------------------------------------------------------------ labels and defaults

    def load_labels(self, ids: Iterable[str], cls_labels: str | os.PathLike | None) -> dict[str, np.ndarray]:
        """Image-level labels of ``ids``, in order: ``{id: (num_fg_classes,) float32}``, from the label file
        ``cls_labels`` (docs/formats.md#label-cache)."""
        if cls_labels is None:
            raise InputError(f"--cls_labels is required for --dataset {self.name}")
        labels = load_cls_labels(cls_labels, self.num_fg_classes)
        return pick_labels(labels, ids, f"--cls_labels {cls_labels}")

    @classmethod
    def flag_defaults(cls, script: str, root: Path | None) -> dict[str, Any]:
        """Defaults of ``script``'s flags for this dataset (``dest -> value``), applied where a flag is not given;
        ``root`` is ``--dataset_root`` (None: not given). The published defaults are VOC's."""
        return {"dataset_root": root if root is not None else cls.default_root}


def pick_labels(labels: Mapping[str, np.ndarray], ids: Iterable[str], source: str) -> dict[str, np.ndarray]:
    """``labels`` of ``ids`` in order; an id without a label raises :class:`InputError` naming ``source``."""
    ids = list(dict.fromkeys(ids))
    missing = [i for i in ids if i not in labels]
    if missing:
        raise InputError(f"{source}: {len(missing)} image(s) have no image-level label; first: {missing[0]}")
    return {i: labels[i] for i in ids}
