"""The image lists and image-level labels shipped in voc12/, as the published repository ships them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tool.dataset import load_img_id_list
from voc12 import make_cls_labels as mcl
from voc12.voc import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
VOC12 = REPO / "voc12"
COUNTS = {"train": 1464, "val": 1449, "train_aug": 10582, "test": 1456}


@pytest.fixture(scope="module")
def lists() -> dict[str, list[str]]:
    return {name: load_img_id_list(VOC12 / f"{name}.txt") for name in COUNTS}


@pytest.fixture(scope="module")
def labels() -> dict[str, np.ndarray]:
    return mcl.load_cls_labels(VOC12 / "cls_labels.npz")


def test_list_counts_and_no_duplicates(lists):
    for name, count in COUNTS.items():
        assert len(lists[name]) == count, name
        assert len(set(lists[name])) == count, name


def test_splits_are_disjoint_as_published(lists):
    train, val, train_aug, test = (set(lists[n]) for n in ("train", "val", "train_aug", "test"))
    assert not val & train_aug  # AffinityNet / SSENet never train on a val image
    assert not val & train and not test & (train | val | train_aug)
    assert train <= train_aug  # train_aug = SBD + VOC train, minus VOC val
    assert lists["train"][:3] == ["2007_000032", "2007_000039", "2007_000063"]


def test_shipped_labels_cover_every_labelled_list(lists, labels):
    assert len(labels) == 12031  # train_aug + val
    assert set(labels) == set(lists["train_aug"]) | set(lists["val"])
    matrix = np.stack(list(labels.values()))
    assert matrix.dtype == np.float32 and set(np.unique(matrix)) == {0.0, 1.0}
    assert matrix.sum(axis=1).min() >= 1  # every image has an object
    # 2007_000032: two aeroplanes and two people (its VOC annotation).
    present = [CLASS_NAMES[k] for k in np.flatnonzero(labels["2007_000032"])]
    assert present == ["aeroplane", "person"]
    with np.load(VOC12 / "cls_labels.npz", allow_pickle=False) as data:
        assert "voc12_root" not in data.files  # not bound to a dataset folder


def test_shipped_files_are_tracked_not_ignored():
    names = [f"voc12/{n}.txt" for n in COUNTS] + ["voc12/cls_labels.npz"]
    ignored = subprocess.run(["git", "check-ignore", *names], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout == "", ignored.stdout


def _annotation(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = "".join(f"<object><name>{n}</name></object>" for n in names)
    path.write_text(f"<annotation>{objects}</annotation>")


def test_folder_free_label_file_serves_any_devkit_and_is_never_rewritten(tmp_path):
    shipped = tmp_path / "cls_labels.npz"
    mcl.save_cls_labels(shipped, {"2007_000032": np.eye(20, dtype=np.float32)[0] + np.eye(20, dtype=np.float32)[14]})
    before = shipped.read_bytes()
    for devkit in ("VOC2012", "elsewhere/VOCdevkit/VOC2012"):
        root = tmp_path / devkit
        _annotation(root / "Annotations" / "2007_000032.xml", ["aeroplane", "person", "aeroplane"])
        _annotation(root / "Annotations" / "2007_000039.xml", ["tvmonitor"])
        got = mcl.load_or_build_cls_labels(root, ["2007_000039", "2007_000032"], shipped)
        assert np.flatnonzero(got["2007_000039"]).tolist() == [19]  # not in the file: read from XML
        assert np.flatnonzero(got["2007_000032"]).tolist() == [0, 14]
    assert shipped.read_bytes() == before
    # A bare devkit without Annotations/ still gets the shipped labels.
    assert np.flatnonzero(mcl.load_or_build_cls_labels(tmp_path / "bare", ["2007_000032"], shipped)["2007_000032"]).size


def test_folder_free_label_file_refuses_a_dataset_whose_annotations_disagree(tmp_path):
    shipped = tmp_path / "cls_labels.npz"
    mcl.save_cls_labels(shipped, {"2007_000032": np.eye(20, dtype=np.float32)[0]})
    toy = tmp_path / "toy"
    _annotation(toy / "Annotations" / "2007_000032.xml", ["cat"])  # a toy image that reuses a VOC id
    with pytest.raises(ValueError, match=r"2007_000032 differs from .*\[0\] vs \[7\]"):
        mcl.load_or_build_cls_labels(toy, ["2007_000032"], shipped)
