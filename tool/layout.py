"""Where every output goes: the files of an image id, of a training session, of a pipeline run (docs/formats.md).

``infer_cls_ser.py`` writes, per image id, the files :func:`cam_stage_paths` names (CRF folders
``<out_crf>_<alpha>`` with alpha written as a float, :func:`crf_dir`); ``infer_aff.py`` the ones
:func:`rw_stage_paths` names, ``infer_seg.py`` the ones :func:`seg_stage_paths` names. The scripts,
``run_pipeline.py`` and the benchmarks all ask here, so a non-default ``--crf_alphas``
moves every reader with the writer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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


def label_png(folder: PathLike, image_id: str) -> Path:
    """``<folder>/<id>.png``: an image's label PNG in any label folder (ground truth, CAM predictions, walk, seg)."""
    return Path(folder) / f"{image_id}.png"


def score_npz(folder: PathLike, image_id: str) -> Path:
    """``<folder>/<id>.npz``: an image's score file (CAM, CRF or walk scores, docs/formats.md)."""
    return Path(folder) / f"{image_id}.npz"


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
        paths["cam"] = score_npz(out_cam, image_id)
    if out_cam_pred:
        paths["cam_pred"] = label_png(out_cam_pred, image_id)
    if out_crf:
        for alpha in crf_alphas:
            paths[crf_kind(alpha)] = score_npz(crf_dir(out_crf, alpha), image_id)
    if out_vis:
        paths["vis"] = label_png(out_vis, image_id)
    return paths


def rw_stage_paths(image_id: str, out_rw: PathLike, out_rw_scores: PathLike | None = None) -> dict[str, Path]:
    """Every file ``infer_aff.py`` writes for ``image_id``: the label PNG (``rw``) and optionally its scores."""
    paths = {"rw": label_png(out_rw, image_id)}
    if out_rw_scores:
        paths["rw_scores"] = score_npz(out_rw_scores, image_id)
    return paths


# The PASCAL VOC evaluation server's layout ("comp6": trained with data beyond VOC's own labels).
SERVER_SUBDIR = Path("results", "VOC2012", "Segmentation", "comp6_test_cls")


def seg_stage_paths(
    image_id: str, out_seg: PathLike | None = None, test_server_dir: PathLike | None = None
) -> dict[str, Path]:
    """Every file ``infer_seg.py`` writes for ``image_id``: the label PNG (``seg``) and/or its server copy."""
    paths = {}
    if out_seg:
        paths["seg"] = label_png(out_seg, image_id)
    if test_server_dir:
        paths["server"] = label_png(Path(test_server_dir) / SERVER_SUBDIR, image_id)
    return paths


def all_exist(paths: Mapping[str, Path]) -> bool:
    """Whether an image's files (one of the ``*_paths`` dicts) are all there: the image is done."""
    return all(p.exists() for p in paths.values())


# --------------------------------------------------------------------------- sessions and runs


def session_files(session_name: PathLike) -> dict[str, Path]:
    """The files a training script writes for ``--session_name`` P: ``P.pth`` (final weights),
    ``P_checkpoint.pth`` (resumable), ``P.log`` and ``P_log.jsonl`` (one JSON line an epoch)."""
    prefix = Path(session_name)
    return {
        "final": prefix.with_name(prefix.name + ".pth"),
        "checkpoint": prefix.with_name(prefix.name + "_checkpoint.pth"),
        "log": prefix.with_name(prefix.name + ".log"),
        "jsonl": prefix.with_name(prefix.name + "_log.jsonl"),
    }


def session_name_of(network: str) -> str:
    """The default ``--session_name`` of a ``--network``: its module name (``network.vgg16_aff`` -> ``vgg16_aff``)."""
    return network.rpartition(".")[2]


@dataclass(frozen=True)
class RunLayout:
    """One trained run of ``run_pipeline.py`` (a variant and a seed): its sessions and the folders of every stage.

    ``<root>/<session>.pth`` (and the other :func:`session_files`) per network, ``tb_<cls|aff|seg>/``, the
    folders ``cam/``, ``cam_pred/``, ``crf_<alpha>/`` (:func:`crf_dir` of :attr:`crf`), ``rw/``, ``seg_val/`` and
    ``eval_<cam|rw|seg>.json``.
    """

    root: Path

    @property
    def cam(self) -> Path:
        return self.root / "cam"

    @property
    def cam_pred(self) -> Path:
        return self.root / "cam_pred"

    @property
    def crf(self) -> Path:
        """The ``--out_crf`` prefix: the folders are ``crf_<alpha>``."""
        return self.root / "crf"

    @property
    def rw(self) -> Path:
        return self.root / "rw"

    @property
    def seg_val(self) -> Path:
        return self.root / "seg_val"

    def session(self, network: str) -> Path:
        return self.root / session_name_of(network)

    def tensorboard(self, stage: str) -> Path:
        return self.root / f"tb_{stage}"

    def eval_json(self, stage: str) -> Path:
        return self.root / f"eval_{stage}.json"


@dataclass(frozen=True)
class WorkLayout:
    """The work folder of ``run_pipeline.py``: generated data, the demo's pretraining, one :class:`RunLayout`
    per variant and seed (``<variant>/seed<seed>/``), the summary, logs and figures."""

    root: Path

    def toy_data(self, dataset: str) -> Path:
        """The demo's toy dataset folder: ``toy_<dataset>`` (``toy_voc`` for voc12, as it always was)."""
        return self.root / ("toy_voc" if dataset == "voc12" else f"toy_{dataset}")

    @property
    def pretrain_data(self) -> Path:
        return self.root / "pretrain_voc"

    @property
    def pretrain_session(self) -> Path:
        return self.root / "pretrain" / "resnet38_pretrain"

    @property
    def pretrain_tensorboard(self) -> Path:
        return self.root / "pretrain" / "tb"

    @property
    def pretrain_labels(self) -> Path:
        return self.root / "pretrain_cls_labels.npz"

    @property
    def cls_labels(self) -> Path:
        """The label cache the VOC stages build from the XML annotations."""
        return self.root / "cls_labels.npz"

    @property
    def lists(self) -> Path:
        """Where ``coco14.prepare`` writes a generated COCO set's lists and labels (``--list_dir``)."""
        return self.root / "lists"

    @property
    def infer_list(self) -> Path:
        return self.root / "infer_list.txt"

    @property
    def log(self) -> Path:
        return self.root / "pipeline.log"

    @property
    def eval_log(self) -> Path:
        return self.root / "evallog.txt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def figure(self, variant: str) -> Path:
        return self.root / f"figure_{variant}.png"

    def run(self, variant: str, seed: int) -> RunLayout:
        return RunLayout(self.root / variant / f"seed{seed}")
