"""Atomic file output and the per-image score files (CAMs, CRF scores).

Every artefact of the pipeline is written to a temporary file in the target
directory and renamed into place, so a killed run never leaves a partial file
and a re-run can trust whatever exists.

Score files replace the reference's pickled ``dict`` ``.npy`` files: one
``<image id>.npz`` per image holding ``keys`` (int64, (K,)) and ``scores``
((K, H, W), float16 by default). For CAM files the keys are 0-based class
indices (0..19) of the present classes; for CRF files they are mask labels
(0 = background, k + 1 = class k). This module is torch-free on purpose:
``evaluation.py`` uses it without importing torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

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


def save_scores(path: str | os.PathLike, keys, scores: np.ndarray, dtype: str = "float16") -> None:
    """Write one image's score maps: ``keys`` (K,) ints and ``scores`` (K, H, W)."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores)
    if scores.ndim != 3 or scores.shape[0] != keys.size:
        raise ValueError(f"{path}: scores must be (K, H, W) with K = len(keys) = {keys.size}, got {scores.shape}")
    with atomic_path(path) as tmp:
        np.savez(tmp, keys=keys, scores=scores.astype(SCORE_DTYPES[dtype]))


def score_file(directory: str | os.PathLike, image_id: str, allow_pickle: bool = False) -> Path:
    """The score file of ``image_id`` in ``directory``: ours (``.npz``) or, with
    ``allow_pickle``, the reference's pickled ``.npy``."""
    directory = Path(directory)
    path = directory / f"{image_id}.npz"
    if path.exists() or not allow_pickle:
        return path
    return directory / f"{image_id}.npy"


def load_scores(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a score file; returns ``(keys (K,) int64, scores (K, H, W) float32)``.

    ``.npz`` files are ours. A ``.npy`` file is the reference's pickled dict
    ``{key: (H, W) array}`` and is only opened when ``allow_pickle`` is True.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"score file not found: {path}")
    if path.suffix == ".npy":
        if not allow_pickle:
            raise ValueError(f"{path}: reference-style pickled .npy score file; pass --allow_pickle to read it")
        obj = np.load(path, allow_pickle=True).item()  # legacy format, explicitly allowed by the caller
        keys = np.array(sorted(obj), dtype=np.int64)
        if keys.size == 0:
            return keys, np.zeros((0, 0, 0), np.float32)
        return keys, np.stack([np.asarray(obj[k], dtype=np.float32) for k in keys])
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = np.asarray(data["keys"], dtype=np.int64)
            scores = np.asarray(data["scores"], dtype=np.float32)
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a valid score file (expected .npz with 'keys' and 'scores'): {e}") from e
    if scores.ndim != 3 or scores.shape[0] != keys.size:
        raise ValueError(f"{path}: 'scores' has shape {scores.shape}, expected ({keys.size}, H, W)")
    return keys, scores
