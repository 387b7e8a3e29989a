"""Which files each stage writes for an image id: the one owner of the output layout (docs/formats.md#score-files).

``infer_cls_ser.py`` writes, per image id, the files :func:`cam_stage_paths` names (CRF folders
``<out_crf>_<alpha>`` with alpha written as a float, :func:`crf_dir`); ``infer_aff.py`` the ones
:func:`rw_stage_paths` names, ``infer_seg.py`` the ones :func:`seg_stage_paths` names. The scripts,
``run_pipeline.py`` and the benchmarks all ask here, so a non-default ``--crf_alphas``
moves every reader with the writer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

PathLike = str | os.PathLike


def crf_dir(out_crf: PathLike, alpha: float) -> Path:
    """``<out_crf>_<alpha>`` with alpha written as a float (``out_crf_4.0``), as the reference names them."""
    return Path(f"{out_crf}_{float(alpha)}")


def crf_kind(alpha: float) -> str:
    """The key of one CRF alpha's file in :func:`cam_stage_paths` (``crf_4.0``)."""
    return f"crf_{float(alpha)}"


def la_ha_crf_dirs(out_crf: PathLike, crf_alphas: Sequence[float]) -> tuple[Path, Path]:
    """The low- and high-alpha CRF folders that ``train_aff.py`` reads (``--la_crf_dir``, ``--ha_crf_dir``)."""
    return crf_dir(out_crf, min(crf_alphas)), crf_dir(out_crf, max(crf_alphas))


def cam_stage_paths(
    image_id: str,
    *,
    out_cam: PathLike | None = None,
    out_cam_pred: PathLike | None = None,
    out_crf: PathLike | None = None,
    crf_alphas: Iterable[float] = (),
    out_vis: PathLike | None = None,
) -> dict[str, Path]:
    """Every file ``infer_cls_ser.py`` writes for ``image_id``, by kind (cam, cam_pred, crf_<alpha>, vis)."""
    paths = {}
    if out_cam:
        paths["cam"] = Path(out_cam) / f"{image_id}.npz"
    if out_cam_pred:
        paths["cam_pred"] = Path(out_cam_pred) / f"{image_id}.png"
    if out_crf:
        for alpha in crf_alphas:
            paths[crf_kind(alpha)] = crf_dir(out_crf, alpha) / f"{image_id}.npz"
    if out_vis:
        paths["vis"] = Path(out_vis) / f"{image_id}.png"
    return paths


def rw_stage_paths(image_id: str, out_rw: PathLike, out_rw_scores: PathLike | None = None) -> dict[str, Path]:
    """Every file ``infer_aff.py`` writes for ``image_id``: the label PNG (``rw``) and optionally its scores."""
    paths = {"rw": Path(out_rw) / f"{image_id}.png"}
    if out_rw_scores:
        paths["rw_scores"] = Path(out_rw_scores) / f"{image_id}.npz"
    return paths


# The PASCAL VOC evaluation server's layout ("comp6": trained with data beyond VOC's own labels).
SERVER_SUBDIR = Path("results", "VOC2012", "Segmentation", "comp6_test_cls")


def seg_stage_paths(
    image_id: str, out_seg: PathLike | None = None, test_server_dir: PathLike | None = None
) -> dict[str, Path]:
    """Every file ``infer_seg.py`` writes for ``image_id``: the label PNG (``seg``) and/or its server copy."""
    paths = {}
    if out_seg:
        paths["seg"] = Path(out_seg) / f"{image_id}.png"
    if test_server_dir:
        paths["server"] = Path(test_server_dir) / SERVER_SUBDIR / f"{image_id}.png"
    return paths


def all_exist(paths: Mapping[str, Path]) -> bool:
    """Whether an image's files (one of the ``*_paths`` dicts) are all there: the image is done."""
    return all(p.exists() for p in paths.values())
