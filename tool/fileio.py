"""Atomic file output and the per-image score files (CAMs, CRF scores).

Every artefact of the pipeline is written to a temporary file in the target
directory and renamed into place, so a killed run never leaves a partial file
and a re-run can trust whatever exists.

Score files replace the reference's pickled ``dict`` ``.npy`` files: one
``<image id>.npz`` per image holding ``keys`` (int64, (K,)) and ``scores``
((K, H, W), float16 by default). For CAM files the keys are 0-based class
indices (0..C-1, C foreground classes) of the present classes; for CRF files they are mask labels
(0 = background, k + 1 = class k), and so for random-walk scores. Each file
also holds ``kind`` (``cam``, ``crf`` or ``rw``): a CRF folder given where CAMs
are expected would otherwise be scored with every class shifted by one.
:func:`load_scores` is the one reader, and it validates every file it reads
(docs/formats.md#score-files). This module is torch-free on purpose:
``evaluation.py`` uses it without importing torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from tool import layout
from tool.cli import InputError, MissingFileError

SCORE_DTYPES = {"float16": np.float16, "float32": np.float32}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary name keeps the suffix, so libraries that pick a format from
    the extension (Pillow, numpy) still do the right thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the output the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def remove_stale_temps(folders: set[Path], image_ids: set[str]) -> int:
    """Delete the hidden temporary files a killed run left for ``image_ids``; returns how many.

    ``atomic_path`` names them ``.<id>.<random>.tmp<suffix>`` (the random part has no dot).
    Only ids about to be recomputed are touched, so other ranks' files in flight are safe.
    """
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if not name.startswith(".") or ".tmp" not in name:
                continue
            stem = name[1:].rpartition(".tmp")[0].rpartition(".")[0]
            if stem in image_ids:
                os.remove(entry.path)
                removed += 1
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def save_png(path: str | os.PathLike, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a (H, W) map of class indices as an 8-bit PNG, palette mode if ``palette`` is given."""
    if label.ndim != 2:
        raise ValueError(f"{path}: expected a (H, W) label map, got shape {label.shape}")
    img = Image.fromarray(label.astype(np.uint8), mode="P" if palette is not None else "L")
    if palette is not None:
        img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as its raw indices (palette indices for "P" images, never RGB)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: label PNG must be palette or single-channel, got mode {img.mode!r}")
        return np.asarray(img)


SCORE_KINDS = {
    # kind: (largest key for C foreground classes minus C, what the keys are, the writer)
    "cam": (-1, "0-based class indices", "infer_cls_ser.py --out_cam"),
    "crf": (0, "0 = background, k + 1 = class k", "infer_cls_ser.py --out_crf"),
    "rw": (0, "0 = background, k + 1 = class k", "infer_aff.py --out_rw_scores"),
}
MAX_SCORE_KEY = 254  # label PNGs hold 8-bit indices, 255 is "ignore"
PICKLE_RISK = "unpickling can run arbitrary code stored in the file: use it only on files you trust"


def save_scores(path: str | os.PathLike, keys, scores: np.ndarray, dtype: str = "float16", *, kind: str) -> None:
    """Write one image's score maps: ``keys`` (K,) ints, ``scores`` (K, H, W) and ``kind``
    (``cam``, ``crf`` or ``rw``, see :data:`SCORE_KINDS`), so that readers can refuse the wrong folder."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"{path}: unknown score kind {kind!r}, expected one of {sorted(SCORE_KINDS)}")
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores)
    if scores.ndim != 3 or scores.shape[0] != keys.size:
        raise ValueError(f"{path}: scores must be (K, H, W) with K = len(keys) = {keys.size}, got {scores.shape}")
    with atomic_path(path) as tmp:
        np.savez(tmp, keys=keys, scores=scores.astype(SCORE_DTYPES[dtype]), kind=np.array(kind))


def score_file(directory: str | os.PathLike, image_id: str, allow_pickle: bool = False) -> Path:
    """The score file of ``image_id`` in ``directory``: ours (``.npz``) or, with
    ``allow_pickle``, the reference's pickled ``.npy``."""
    path = layout.score_npz(directory, image_id)
    if path.exists() or not allow_pickle:
        return path
    return path.with_suffix(".npy")


def missing_score_file_message(path: str | os.PathLike) -> str:
    """Why ``path`` cannot be read because it is absent, with a hint when a legacy ``.npy`` sits beside it."""
    path = Path(path)
    legacy = path.with_suffix(".npy")
    if path.suffix == ".npz" and legacy.is_file():
        return (
            f"score file not found: {path}; a reference-style pickled {legacy.name} is there: --allow_pickle "
            f"reads it, but {PICKLE_RISK}"
        )
    return f"score file not found: {path}"


def _looks_like(keys: np.ndarray, scores: np.ndarray) -> str | None:
    """The kind an old file without a ``kind`` entry looks like: ``crf`` when it has a background key and
    its scores sum to 1 at every pixel (CRF marginals, random-walk scores), ``cam`` when it has no key 0."""
    if 0 not in keys:
        return "cam"
    if keys.size >= 2 and scores.size and np.abs(scores.sum(axis=0) - 1).max() < 0.02:
        return "crf"
    return None


def check_scores(
    path: Path,
    keys: np.ndarray,
    scores: np.ndarray,
    kind: str | None,
    stored_kind: str | None,
    num_fg_classes: int | None = None,
) -> None:
    """Raise :class:`InputError` naming ``path`` unless the file is a valid score file of ``kind``:
    integer keys, unique and in the kind's range for ``num_fg_classes`` foreground classes (None: any that fits
    a label PNG), (K, H, W) scores and finite values."""
    if stored_kind is not None and stored_kind not in SCORE_KINDS:
        raise InputError(f"{path}: unknown score kind {stored_kind!r}, expected one of {sorted(SCORE_KINDS)}")
    if kind is not None and stored_kind is None:
        guess = _looks_like(keys, scores)
        if guess is not None and (guess == "cam") != (kind == "cam"):
            stored_kind = guess
    if kind is not None and stored_kind is not None and (stored_kind == "cam") != (kind == "cam"):
        found = SCORE_KINDS[stored_kind]
        wanted = SCORE_KINDS[kind]
        raise InputError(
            f"{path}: this looks like a folder of {stored_kind.upper()} files (keys {found[1]}, written by "
            f"{found[2]}), but {kind.upper()} files (keys {wanted[1]}, from {wanted[2]}) are expected here"
        )
    hi = MAX_SCORE_KEY if num_fg_classes is None else num_fg_classes + SCORE_KINDS[kind or "crf"][0]
    lo = 0
    if keys.ndim != 1:
        raise InputError(f"{path}: 'keys' must be one-dimensional, got shape {keys.shape}")
    if keys.size and keys.dtype.kind not in "iu":
        raise InputError(f"{path}: 'keys' must be integers, got {keys.dtype} values {keys.tolist()}")
    if np.unique(keys).size != keys.size:
        raise InputError(f"{path}: duplicate keys {keys.tolist()}")
    if keys.size and (keys.min() < lo or keys.max() > hi):
        classes = "" if num_fg_classes is None else f" ({num_fg_classes} foreground classes: another --dataset?)"
        raise InputError(f"{path}: keys {keys.tolist()} out of range, expected {lo}..{hi}{classes}")
    if kind in ("crf", "rw") and 0 not in keys:
        raise InputError(f"{path}: keys {keys.tolist()} have no 0 (background)")
    if scores.ndim != 3 or scores.shape[0] != keys.size:
        raise InputError(f"{path}: 'scores' has shape {scores.shape}, expected ({keys.size}, H, W)")
    if not np.isfinite(scores).all():
        raise InputError(f"{path}: scores contain NaN or infinite values")


def load_scores(
    path: str | os.PathLike, allow_pickle: bool = False, kind: str | None = None, num_fg_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a score file; returns ``(keys (K,) int64, scores (K, H, W) float32)``.

    ``.npz`` files are ours. A ``.npy`` file is the reference's pickled dict
    ``{key: (H, W) array}`` and is only opened when ``allow_pickle`` is True.
    ``kind`` (``cam``, ``crf``, ``rw``) is what the caller expects: a file of the
    other family (CAM vs. background-keyed) is refused, by its ``kind`` entry or,
    for files written before it existed, by its keys and scores; with ``num_fg_classes`` (the dataset's),
    so is a key outside its classes. Every problem
    raises :class:`InputError` (or FileNotFoundError) naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(missing_score_file_message(path))
    stored_kind = None
    if path.suffix == ".npy":
        if not allow_pickle:
            raise InputError(
                f"{path}: reference-style pickled .npy score file; --allow_pickle reads it, but {PICKLE_RISK}"
            )
        try:
            obj = np.load(path, allow_pickle=True).item()  # legacy format, explicitly allowed by the caller
            raw_keys = list(obj)
            if any(not isinstance(k, (int, np.integer)) for k in raw_keys):
                raise InputError(f"{path}: 'keys' must be integers, got {raw_keys}")
            keys = np.array(raw_keys, dtype=np.int64)
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            arrays = [np.asarray(obj[raw_keys[i]], dtype=np.float32) for i in order]
            scores = np.stack(arrays) if arrays else np.zeros((0, 0, 0), np.float32)
        except InputError:
            raise
        except Exception as e:  # a truncated or foreign pickle fails in many ways
            raise InputError(f"{path}: not a readable reference .npy score dict ({type(e).__name__}: {e})") from None
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = np.asarray(data["keys"])
                scores = np.asarray(data["scores"], dtype=np.float32)
                stored_kind = str(data["kind"]) if "kind" in data.files else None
        except Exception as e:  # BadZipFile, zlib.error, EOFError, KeyError, ValueError, OSError
            raise InputError(
                f"{path}: not a readable score file (truncated, or not an .npz with 'keys' and 'scores'): "
                f"{type(e).__name__}: {e}"
            ) from None
    check_scores(path, keys, scores, kind, stored_kind, num_fg_classes)
    return keys.astype(np.int64), scores


# --------------------------------------------------------------------------- image-level label files


def save_cls_labels(
    path: str | os.PathLike,
    labels: dict[str, np.ndarray],
    root: str | os.PathLike | None = None,
    num_classes: int | None = None,
) -> None:
    """Write image-level labels atomically (docs/formats.md#label-cache): ``ids`` (sorted), ``labels`` ((N, C)
    float32 multi-hot) and, when given, ``voc12_root``, the resolved dataset folder they were read from.
    ``num_classes`` gives C when ``labels`` is empty."""
    ids = sorted(labels)
    width = num_classes if not ids else len(labels[ids[0]])
    if width is None:
        raise ValueError(f"{path}: no labels to write and no num_classes given")
    matrix = np.stack([np.asarray(labels[i], dtype=np.float32) for i in ids]) if ids else np.zeros((0, width))
    extra = {} if root is None else {"voc12_root": np.array(str(Path(root).resolve()))}
    with atomic_path(path) as tmp:
        np.savez(tmp, ids=np.array(ids, dtype=str), labels=matrix.astype(np.float32), **extra)


def load_cls_labels(path: str | os.PathLike, num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Read a label file of :func:`save_cls_labels`: ``{id: (C,) float32}``; with ``num_classes`` C must equal it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"class label file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = data["ids"]
            matrix = data["labels"]
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a class label file (expected .npz with 'ids' and 'labels'): {e}") from e
    if ids.ndim != 1 or ids.dtype.kind != "U":
        raise InputError(f"{path}: 'ids' must be a 1-d str array, got {ids.dtype} with shape {ids.shape}")
    width = matrix.shape[1] if matrix.ndim == 2 else None
    if matrix.ndim != 2 or matrix.shape[0] != ids.size or (num_classes is not None and width != num_classes):
        expected = f"({ids.size}, {num_classes if num_classes is not None else 'C'})"
        raise InputError(
            f"{path}: 'labels' has shape {matrix.shape}, expected {expected}"
            + (" (labels of another dataset?)" if width is not None and width != num_classes else "")
        )
    matrix = matrix.astype(np.float32)
    return {str(image_id): matrix[row] for row, image_id in enumerate(ids)}


def label_file_root(path: str | os.PathLike) -> str | None:
    """The dataset folder a label file records (``voc12_root``), or None for a portable one."""
    with np.load(path, allow_pickle=False) as data:
        return str(data["voc12_root"]) if "voc12_root" in data.files else None
