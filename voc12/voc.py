"""PASCAL VOC 2012 constants, paths and image lists (docs/method.md#data).

Everything VOC-specific lives in ``voc12/``; other packages import it from here.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from tool.cli import InputError, MissingFileError
from tool.metrics import IGNORE_INDEX as IGNORE_INDEX  # the label value every loss and score skips

logger = logging.getLogger(__name__)

CLASS_NAMES = tuple(
    "aeroplane bicycle bird boat bottle bus car cat chair cow "
    "diningtable dog horse motorbike person pottedplant sheep sofa train tvmonitor".split()
)
NUM_FG_CLASSES = 20
NUM_CLASSES = 21  # background + 20 foreground classes, as in the masks
CAT_NAMES_WITH_BG = ("background", *CLASS_NAMES)


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map, (n, 3) uint8: bit-interleaved class index."""
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


def jpeg_path(voc12_root: str | os.PathLike, image_id: str) -> Path:
    return Path(voc12_root) / "JPEGImages" / f"{image_id}.jpg"


def annotation_path(voc12_root: str | os.PathLike, image_id: str) -> Path:
    return Path(voc12_root) / "Annotations" / f"{image_id}.xml"


def segmentation_path(voc12_root: str | os.PathLike, image_id: str, aug: bool = False) -> Path:
    folder = "SegmentationClassAug" if aug else "SegmentationClass"
    return Path(voc12_root) / folder / f"{image_id}.png"
