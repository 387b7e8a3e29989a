"""Every script on bad input: exit code 1, the file or flag named, nothing written before left changed.

Each case builds one bad input in its own folder next to a shared toy VOC tree (3 train images, 64 px, 1/8-width
networks) and runs the script in-process exactly as its ``__main__`` does (``tool.cli.run``), so a case costs
well under a second to a few seconds. Before and after each case every file of the shared tree (including the
previously written outputs in ``prev/``) is hashed: a failing run must leave them byte-identical.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation
import infer_aff
import infer_cls_ser
import infer_seg
import train_aff
import train_cls_ser
import train_seg
from network import resnet38_aff, resnet38_cls_ser, vgg16d
from tests.caffe_wire import caffemodel_of
from tests.helpers import quick_train_flags
from tool import cli, torchutils
from tool.dataset import color_map, load_img_id_list
from tool.fileio import load_label_png, save_png, save_scores
from voc12 import make_cls_labels, make_sbd_aug
from voc12 import make_toy_voc as toy_voc
from voc12.make_cls_labels import load_cls_labels, load_or_build_cls_labels, save_cls_labels
from voc12.make_toy_voc import make_toy_voc
from voc12.voc import jpeg_path, segmentation_path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = "0.125"


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """One torch thread (conftest.py): the tiny networks gain nothing from more."""


@pytest.fixture(autouse=True)
def _fresh_logging():
    """The scripts log to the sys.stdout of their run; a later test's capture must not inherit that stream."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("bad_inputs")
    root = base / "VOC2012"
    make_toy_voc(root, num_train=3, num_val=1, size=64, seed=0)
    sets = root / "ImageSets" / "Segmentation"
    ids = load_img_id_list(sets / "train.txt")
    load_or_build_cls_labels(root, ids + load_img_id_list(sets / "val.txt"), base / "cls_labels.npz")
    for image_id in ids:  # CAM and CRF files made from the ground truth
        gt = load_label_png(segmentation_path(root, image_id)).copy()
        gt[gt == 255] = 0
        classes = [int(c) for c in np.unique(gt) if c != 0]
        onehot = np.stack([(gt == k).astype(np.float32) for k in [0, *classes]])
        save_scores(base / "cam" / f"{image_id}.npz", np.array(classes) - 1, onehot[1:], kind="cam")
        for alpha in ("4.0", "24.0"):
            crf = (0.9 * onehot + 0.1 / len(onehot)) / (0.9 + 0.1)
            save_scores(base / f"crf_{alpha}" / f"{image_id}.npz", [0, *classes], crf, kind="crf")
        save_png(base / "pred" / f"{image_id}.png", gt.astype(np.uint8), color_map())
    torch.manual_seed(0)
    torch.save(resnet38_cls_ser.Net(width_mult=0.125).state_dict(), base / "cls.pth")
    torch.save(resnet38_aff.Net(width_mult=0.125).state_dict(), base / "aff.pth")
    torch.save(resnet38_aff.Net(width_mult=0.25).state_dict(), base / "aff_wide.pth")
    (base / "vgg16.caffemodel").write_bytes(caffemodel_of(vgg16d.Net(width_mult=0.125).state_dict()))
    wide_cls = resnet38_cls_ser.Net(width_mult=0.25).state_dict()
    torch.save(
        {"model": wide_cls, "optimizer": {}, "scaler": {}, "step": 0, "epoch_done": True, "rng": {}},
        base / "wide_checkpoint.pth",
    )
    # Previously written outputs of every stage, which no failing run may touch.
    prev = base / "prev"
    save_png(prev / "rw" / f"{ids[0]}.png", np.zeros((64, 64), np.uint8), color_map())
    save_scores(prev / "cam" / f"{ids[0]}.npz", [0], np.zeros((1, 64, 64), np.float32), kind="cam")
    torch.save({"model": {}}, prev / "sess_checkpoint.pth")
    (prev / "eval.json").write_text("{}\n")
    return {"base": base, "root": root, "train_list": sets / "train.txt", "ids": ids, "prev": prev}


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_script(module, argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of ``module`` run as its ``__main__`` does."""
    try:
        cli.run(module.main, module.get_args_parser(), [str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- argv of each script


def eval_args(w, *extra, predict_dir=None, list_path=None):
    return [
        "--list",
        list_path or w["train_list"],
        "--predict_dir",
        predict_dir or w["base"] / "pred",
        "--gt_dir",
        w["root"] / "SegmentationClass",
        "--logfile",
        "",
        "--num_workers",
        "0",
        "--json",
        w["prev"] / "eval.json",
        *extra,
    ]


def eval_npy(w, cam_dir, *extra):
    return eval_args(w, "--type", "npy", "--t", "0.2", *extra, predict_dir=cam_dir)


def aff_args(w, *extra, cam_dir=None, list_path=None, root=None, weights=None):
    return [
        "--weights",
        weights or w["base"] / "aff.pth",
        "--infer_list",
        list_path or w["train_list"],
        "--cam_dir",
        cam_dir or w["base"] / "cam",
        "--voc12_root",
        root or w["root"],
        "--out_rw",
        w["prev"] / "rw",
        "--width_mult",
        WIDTH,
        "--num_workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


def cls_infer_args(w, *extra, list_path=None, root=None, weights=None):
    labels = w["base"] / "cls_labels.npz" if root is None else root.parent / "cls_labels.npz"
    return [
        "--weights",
        weights or w["base"] / "cls.pth",
        "--infer_list",
        list_path or w["train_list"],
        "--voc12_root",
        root or w["root"],
        "--cls_labels",
        labels,
        "--out_cam",
        w["prev"] / "cam",
        "--width_mult",
        WIDTH,
        "--num_workers",
        "0",
        "--crf_workers",
        "0",
        "--device",
        "cpu",
        "--scales",
        "1.0",
        *extra,
    ]


def train_args(w, tmp, *extra, list_path=None, weights=None):
    return [
        "--train_list",
        list_path or w["train_list"],
        "--val_list",
        "",
        "--voc12_root",
        w["root"],
        "--cls_labels",
        w["base"] / "cls_labels.npz",
        "--weights",
        weights or w["base"] / "cls.pth",
        "--width_mult",
        WIDTH,
        "--crop_size",
        "48",
        "--resize_long",
        "48",
        "64",
        *quick_train_flags(),
        "--session_name",
        tmp / "sess",
        *extra,
    ]


def aff_train_args(w, tmp, *extra, la=None, weights=None):
    return [
        "--train_list",
        w["train_list"],
        "--voc12_root",
        w["root"],
        "--weights",
        weights or w["base"] / "aff.pth",
        "--la_crf_dir",
        la or w["base"] / "crf_4.0",
        "--ha_crf_dir",
        w["base"] / "crf_24.0",
        "--width_mult",
        WIDTH,
        "--crop_size",
        "72",
        *quick_train_flags(),
        "--session_name",
        tmp / "sess",
        *extra,
    ]


def seg_train_args(w, tmp, *extra, label_dir=None):
    """train_seg.py from the SSENet checkpoint's backbone (its fc8 is another head's, ignored)."""
    return [
        "--train_list",
        w["train_list"],
        "--voc12_root",
        w["root"],
        "--weights",
        w["base"] / "cls.pth",
        "--label_dir",
        label_dir or w["base"] / "pred",
        "--width_mult",
        WIDTH,
        "--crop_size",
        "48",
        *quick_train_flags(),
        "--session_name",
        tmp / "sess",
        *extra,
    ]


def seg_infer_args(w, tmp, *extra):
    return [
        "--weights",
        w["base"] / "cls.pth",
        "--infer_list",
        w["train_list"],
        "--voc12_root",
        w["root"],
        "--out_seg",
        tmp / "seg",
        "--width_mult",
        WIDTH,
        "--num_workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


def seg_labels_with_30(w, tmp: Path) -> Path:
    """A copy of the label folder in which every image has one pixel of value 30 (no such class)."""
    folder = tmp / "labels"
    for image_id in w["ids"]:
        label = load_label_png(w["base"] / "pred" / f"{image_id}.png").copy()
        label[0, 0] = 30
        save_png(folder / f"{image_id}.png", label)
    return folder


# --------------------------------------------------------------------------- bad files


def write_list(tmp: Path, text: str | bytes) -> Path:
    path = tmp / "list.txt"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def cam_dir_with(w, tmp: Path, keys, scores=None, store=None) -> Path:
    """A copy of the CAM folder whose second image's file is replaced (``store``: raw npz entries)."""
    folder = tmp / "cam"
    folder.mkdir()
    for image_id in w["ids"]:
        (folder / f"{image_id}.npz").write_bytes((w["base"] / "cam" / f"{image_id}.npz").read_bytes())
    target = folder / f"{w['ids'][1]}.npz"
    if store is not None:
        np.savez(target, **store)
    else:
        shape = (len(keys), *image_shape(w, w["ids"][1]))
        save_scores(target, keys, scores if scores is not None else np.full(shape, 0.5), kind="cam")
    return folder


def image_shape(w, image_id: str) -> tuple[int, int]:
    return load_label_png(segmentation_path(w["root"], image_id)).shape


def raw_cam(w, keys) -> dict:
    keys = np.asarray(keys)
    scores = np.full((keys.size, *image_shape(w, w["ids"][1])), 0.5, np.float32)
    return {"keys": keys, "scores": scores, "kind": np.array("cam")}


def truncated(path: Path, tmp: Path, name: str) -> Path:
    data = path.read_bytes()
    out = tmp / name
    out.write_bytes(data[: len(data) // 2])
    return out


def voc_copy_with_image(w, tmp: Path, writer: Callable[[Path], None]) -> Path:
    """A VOC root whose JPEGImages links to the shared images, except the second image (written by ``writer``)."""
    root = tmp / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    os.symlink(w["root"] / "Annotations", root / "Annotations")  # for the label cache of this root
    for image_id in w["ids"]:
        os.symlink(jpeg_path(w["root"], image_id), jpeg_path(root, image_id))
    target = jpeg_path(root, w["ids"][1])
    target.unlink()
    writer(target)
    return root


def sixteen_bit(path: Path) -> None:
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(path, format="PNG")  # content decides, not the name


def cut_jpeg(w):
    def write(path: Path) -> None:
        data = jpeg_path(w["root"], w["ids"][1]).read_bytes()
        path.write_bytes(data[: len(data) // 3])

    return write


def legacy_npy_only(w, tmp: Path, source: str) -> Path:
    """A score folder where the second image has only a reference-style pickled .npy."""
    folder = tmp / source
    folder.mkdir()
    for image_id in w["ids"]:
        (folder / f"{image_id}.npz").write_bytes((w["base"] / source / f"{image_id}.npz").read_bytes())
    (folder / f"{w['ids'][1]}.npz").unlink()
    np.save(folder / f"{w['ids'][1]}.npy", np.array({0: np.zeros((64, 64), np.float32)}, dtype=object))
    return folder


def old_crf_folder(w, tmp: Path) -> Path:
    """CRF files written before the kind entry existed (keys and scores only)."""
    folder = tmp / "old_crf"
    folder.mkdir()
    for image_id in w["ids"]:
        with np.load(w["base"] / "crf_4.0" / f"{image_id}.npz") as data:
            np.savez(folder / f"{image_id}.npz", keys=data["keys"], scores=data["scores"])
    return folder


# --------------------------------------------------------------------------- the table

# id -> builder(world, tmp) returning (script, argv, substrings the message must contain)
CASES: dict[str, Callable] = {
    # ---- list files (evaluation: duplicates are an error)
    "eval_list_missing": lambda w, t: (evaluation, eval_args(w, list_path=t / "no.txt"), ["no.txt", "not found"]),
    "eval_list_space_in_id": lambda w, t: (
        evaluation,
        eval_args(w, list_path=write_list(t, f"{w['ids'][0]}\nimg 001\n")),
        ["list.txt:2", "img 001"],
    ),
    "eval_list_comment": lambda w, t: (
        evaluation,
        eval_args(w, list_path=write_list(t, f"# ids\n{w['ids'][0]}\n")),
        ["list.txt:1", "# ids"],
    ),
    "eval_list_bare_folder": lambda w, t: (
        evaluation,
        eval_args(w, list_path=write_list(t, f"{w['ids'][0]}\n/JPEGImages/\n")),
        ["list.txt:2"],
    ),
    "eval_list_not_utf8": lambda w, t: (
        evaluation,
        eval_args(w, list_path=write_list(t, f"{w['ids'][0]}\n".encode() + b"\xff\xfe\n")),
        ["list.txt:2", "UTF-8"],
    ),
    "eval_list_duplicates": lambda w, t: (
        evaluation,
        eval_args(w, list_path=write_list(t, "\n".join([*w["ids"], w["ids"][0]]))),
        ["list.txt", "duplicate", "lines 1 and 4"],
    ),
    "eval_list_empty": lambda w, t: (evaluation, eval_args(w, list_path=write_list(t, "\n\n")), ["list.txt", "empty"]),
    # ---- evaluation: masks
    "eval_pred_missing": lambda w, t: (evaluation, eval_args(w, predict_dir=t), [f"{w['ids'][0]}.png", "not found"]),
    "eval_gt_missing": lambda w, t: (evaluation, eval_args(w, "--gt_dir", t), [str(t), "ground truth not found"]),
    "eval_pred_size": lambda w, t: (
        evaluation,
        eval_args(w, predict_dir=pred_dir_with(w, t, np.zeros((32, 64), np.uint8))),
        ["pred", "(32, 64)"],
    ),
    "eval_pred_value": lambda w, t: (
        evaluation,
        eval_args(w, predict_dir=pred_dir_with(w, t, np.full(image_shape(w, w["ids"][1]), 30, np.uint8))),
        ["pred", "30"],
    ),
    # ---- evaluation: CAM score files
    "eval_cam_key_minus1": lambda w, t: (evaluation, eval_npy(w, cam_dir_with(w, t, [-1])), ["cam", "out of range"]),
    "eval_cam_key_25": lambda w, t: (evaluation, eval_npy(w, cam_dir_with(w, t, [25])), ["out of range", "0..19"]),
    "eval_cam_dup_keys": lambda w, t: (evaluation, eval_npy(w, cam_dir_with(w, t, [3, 3])), ["duplicate keys"]),
    "eval_cam_nan": lambda w, t: (
        evaluation,
        eval_npy(w, cam_dir_with(w, t, [3], np.full((1, *image_shape(w, w["ids"][1])), np.nan))),
        ["cam", "NaN"],
    ),
    "eval_cam_float_keys": lambda w, t: (
        evaluation,
        eval_npy(w, cam_dir_with(w, t, None, store=raw_cam(w, np.array([2.7])))),
        ["integers"],
    ),
    "eval_crf_folder": lambda w, t: (
        evaluation,
        eval_npy(w, w["base"] / "crf_4.0"),
        ["crf_4.0", "looks like a folder of CRF", "CAM files"],
    ),
    "eval_old_crf_folder": lambda w, t: (
        evaluation,
        eval_npy(w, old_crf_folder(w, t)),
        ["old_crf", "looks like a folder of CRF"],
    ),
    "eval_cam_truncated": lambda w, t: (
        evaluation,
        eval_npy(w, truncated_cam_dir(w, t)),
        [f"{w['ids'][1]}.npz", "not a readable score file"],
    ),
    "eval_cam_legacy_npy": lambda w, t: (
        evaluation,
        eval_npy(w, legacy_npy_only(w, t, "cam")),
        ["--allow_pickle", "arbitrary code"],
    ),
    "eval_cam_size": lambda w, t: (
        evaluation,
        eval_npy(w, cam_dir_with(w, t, [3], np.zeros((1, 32, 64)))),
        [f"{w['ids'][1]}.npz"],
    ),
    "eval_flag_t_nan": lambda w, t: (evaluation, eval_npy(w, w["base"] / "cam", "--t", "nan"), ["--t", "[0, 1]"]),
    "eval_flag_t_2": lambda w, t: (evaluation, eval_npy(w, w["base"] / "cam", "--t", "2"), ["--t", "[0, 1]"]),
    "eval_flag_workers": lambda w, t: (evaluation, eval_args(w, "--num_workers", "-1"), ["--num_workers", ">= 0"]),
    "eval_flag_mode": lambda w, t: (evaluation, eval_args(w, "--curve"), ["only apply to --type npy"]),
    # ---- infer_aff: CAM files, flags, weights, images, outputs
    "aff_cam_key_minus1": lambda w, t: (infer_aff, aff_args(w, cam_dir=cam_dir_with(w, t, [-1])), ["out of range"]),
    "aff_cam_key_25": lambda w, t: (infer_aff, aff_args(w, cam_dir=cam_dir_with(w, t, [25])), ["out of range"]),
    "aff_cam_dup_keys": lambda w, t: (infer_aff, aff_args(w, cam_dir=cam_dir_with(w, t, [4, 4])), ["duplicate keys"]),
    "aff_cam_nan": lambda w, t: (
        infer_aff,
        aff_args(w, cam_dir=cam_dir_with(w, t, [3], np.full((1, *image_shape(w, w["ids"][1])), np.nan))),
        ["NaN"],
    ),
    "aff_cam_float_keys": lambda w, t: (
        infer_aff,
        aff_args(w, cam_dir=cam_dir_with(w, t, None, store=raw_cam(w, np.array([2.7])))),
        ["integers"],
    ),
    "aff_crf_as_cam": lambda w, t: (
        infer_aff,
        aff_args(w, cam_dir=w["base"] / "crf_24.0"),
        ["crf_24.0", "looks like a folder of CRF"],
    ),
    "aff_cam_size": lambda w, t: (
        infer_aff,
        aff_args(w, cam_dir=cam_dir_with(w, t, [3], np.zeros((1, 5, 5)))),
        ["cam", "(5, 5)"],
    ),
    "aff_cam_missing": lambda w, t: (infer_aff, aff_args(w, cam_dir=t), ["--cam_dir", "score file not found"]),
    "aff_cam_legacy_npy": lambda w, t: (
        infer_aff,
        aff_args(w, cam_dir=legacy_npy_only(w, t, "cam")),
        ["--allow_pickle", "arbitrary code"],
    ),
    "aff_flag_logt": lambda w, t: (infer_aff, aff_args(w, "--logt", "40"), ["--logt", "[0, 12]", "2 ** logt"]),
    "aff_flag_bg_nan": lambda w, t: (infer_aff, aff_args(w, "--bg_score", "nan"), ["--bg_score", "[0, 1]"]),
    "aff_flag_beta": lambda w, t: (infer_aff, aff_args(w, "--beta", "-1"), ["--beta"]),
    "aff_flag_workers": lambda w, t: (infer_aff, aff_args(w, "--num_workers", "x"), ["--num_workers", "integer"]),
    "aff_weights_empty": lambda w, t: (infer_aff, aff_args(w, weights=empty_file(t)), ["empty.pth", "empty"]),
    "aff_weights_random": lambda w, t: (
        infer_aff,
        aff_args(w, weights=random_file(t)),
        ["random.pth", "not a complete PyTorch file"],
    ),
    "aff_weights_truncated": lambda w, t: (
        infer_aff,
        aff_args(w, weights=truncated(w["base"] / "aff.pth", t, "cut.pth")),
        ["cut.pth", "--weights"],
    ),
    "aff_weights_other_stage": lambda w, t: (
        infer_aff,
        aff_args(w, weights=w["base"] / "cls.pth"),
        ["cls.pth", "head weights missing"],
    ),
    "aff_weights_wrong_width": lambda w, t: (
        infer_aff,
        aff_args(w, weights=w["base"] / "aff_wide.pth"),
        ["aff_wide.pth", "--width_mult"],
    ),
    "aff_out_is_file": lambda w, t: (infer_aff, out_rw_is_file(w, t), ["--out_rw", "cannot create"]),
    "aff_list_bad_line": lambda w, t: (
        infer_aff,
        aff_args(w, list_path=write_list(t, f"{w['ids'][0]} x\n")),
        ["list.txt:1"],
    ),
    "aff_image_16bit": lambda w, t: (
        infer_aff,
        aff_args(w, root=voc_copy_with_image(w, t, sixteen_bit)),
        ["I;16", "8 bits"],
    ),
    "aff_image_truncated": lambda w, t: (
        infer_aff,
        aff_args(w, root=voc_copy_with_image(w, t, cut_jpeg(w))),
        [f"{w['ids'][1]}.jpg", "truncated"],
    ),
    # ---- infer_cls_ser
    "cls_flag_scales": lambda w, t: (infer_cls_ser, cls_infer_args(w, "--scales", "0"), ["--scales", "(0, 4]"]),
    "cls_flag_alpha": lambda w, t: (infer_cls_ser, cls_infer_args(w, "--crf_alphas", "-4"), ["--crf_alphas"]),
    "cls_flag_bg_nan": lambda w, t: (infer_cls_ser, cls_infer_args(w, "--bg_score", "nan"), ["--bg_score"]),
    "cls_flag_crf_workers": lambda w, t: (infer_cls_ser, cls_infer_args(w, "--crf_workers", "-2"), ["--crf_workers"]),
    "cls_weights_missing": lambda w, t: (
        infer_cls_ser,
        cls_infer_args(w, weights=t / "none.pth"),
        ["--weights", "none.pth"],
    ),
    "cls_out_is_file": lambda w, t: (infer_cls_ser, out_cam_is_file(w, t), ["--out_cam", "cannot create"]),
    "cls_image_truncated": lambda w, t: (
        infer_cls_ser,
        cls_infer_args(w, root=voc_copy_with_image(w, t, cut_jpeg(w))),
        [f"{w['ids'][1]}.jpg"],
    ),
    "cls_image_16bit": lambda w, t: (
        infer_cls_ser,
        cls_infer_args(w, root=voc_copy_with_image(w, t, sixteen_bit)),
        ["I;16"],
    ),
    # ---- train_cls_ser / train_aff
    "train_flag_batch": lambda w, t: (train_cls_ser, train_args(w, t, "--batch_size", "0"), ["--batch_size", ">= 1"]),
    "train_flag_resize_order": lambda w, t: (
        train_cls_ser,
        train_args(w, t, "--resize_long", "768", "448"),
        ["--resize_long", "LOW <= HIGH"],
    ),
    "train_flag_branch_rate": lambda w, t: (
        train_cls_ser,
        train_args(w, t, "--branch_rate", "1.5"),
        ["--branch_rate", "(0, 1)"],
    ),
    "train_flag_crop": lambda w, t: (train_cls_ser, train_args(w, t, "--crop_size", "0"), ["--crop_size"]),
    "train_flag_lr": lambda w, t: (train_cls_ser, train_args(w, t, "--lr", "inf"), ["--lr"]),
    "train_resume_random": lambda w, t: (
        train_cls_ser,
        train_args(w, t, "--resume", random_file(t)),
        ["--resume", "random.pth"],
    ),
    "train_resume_weights_only": lambda w, t: (
        train_cls_ser,
        train_args(w, t, "--resume", w["base"] / "cls.pth"),
        ["--resume", "not a training checkpoint"],
    ),
    "train_resume_wrong_width": lambda w, t: (
        train_cls_ser,
        train_args(w, t, "--resume", w["base"] / "wide_checkpoint.pth"),
        ["--resume", "does not fit"],
    ),
    "train_list_comment": lambda w, t: (
        train_cls_ser,
        train_args(w, t, list_path=write_list(t, f"# x\n{w['ids'][0]}\n")),
        ["list.txt:1"],
    ),
    "train_list_duplicates": lambda w, t: (
        train_cls_ser,
        train_args(w, t, list_path=write_list(t, "\n".join(w["ids"] * 2))),
        ["duplicate"],
    ),
    "train_params_truncated": lambda w, t: (
        train_cls_ser,
        train_args(w, t, weights=random_file(t, "x.params")),
        ["x.params"],
    ),
    "train_aff_flag_crop": lambda w, t: (train_aff, aff_train_args(w, t, "--crop_size", "64"), ["--crop_size", "9"]),
    "train_aff_cam_as_crf": lambda w, t: (
        train_aff,
        aff_train_args(w, t, la=w["base"] / "cam"),
        ["cam", "looks like a folder of CAM"],
    ),
    "train_aff_legacy_npy": lambda w, t: (
        train_aff,
        aff_train_args(w, t, la=legacy_npy_only(w, t, "crf_4.0")),
        ["--allow_pickle", "arbitrary code"],
    ),
    # ---- VGG16 (docs/method.md#vgg16): the .caffemodel path and weights of the other backbone
    "train_vgg16_caffemodel_truncated": lambda w, t: (
        train_cls_ser,
        train_args(w, t, *VGG_CLS, weights=truncated(w["base"] / "vgg16.caffemodel", t, "cut.caffemodel")),
        ["--weights", "cut.caffemodel", "byte", "cut short"],
    ),
    "train_vgg16_caffemodel_random": lambda w, t: (
        train_cls_ser,
        train_args(w, t, *VGG_CLS, weights=random_file(t, "noise.caffemodel")),
        ["--weights", "noise.caffemodel", "byte"],
    ),
    "train_vgg16_resnet_weights": lambda w, t: (
        train_cls_ser,
        train_args(w, t, *VGG_CLS),
        ["--weights", "cls.pth", "the model expects", "--network"],
    ),
    "train_resnet_caffemodel": lambda w, t: (
        train_cls_ser,
        train_args(w, t, weights=w["base"] / "vgg16.caffemodel"),
        ["--weights", "vgg16.caffemodel", "resnet38_cls_ser", "not .caffemodel"],
    ),
    "train_aff_vgg16_caffemodel_truncated": lambda w, t: (
        train_aff,
        aff_train_args(
            w, t, "--network", "network.vgg16_aff", weights=truncated(w["base"] / "vgg16.caffemodel", t, "c.caffemodel")
        ),
        ["--weights", "c.caffemodel"],
    ),
    "infer_cls_vgg16_wrong_width": lambda w, t: (
        infer_cls_ser,
        cls_infer_args(w, *VGG_CLS, "--width_mult", "0"),
        ["--width_mult", "(0, 4]"],
    ),
    "infer_cls_no_such_network": lambda w, t: (
        infer_cls_ser,
        cls_infer_args(w, "--network", "network.vgg19_cls_ser"),
        ["--network", "no such module"],
    ),
    # ---- train_seg / infer_seg (docs/method.md#segmentation)
    "train_seg_no_label_dir": lambda w, t: (
        train_seg,
        seg_train_args(w, t, label_dir=t / "no_rw"),
        ["--label_dir", "no_rw", "not a folder"],
    ),
    "train_seg_label_value_30": lambda w, t: (
        train_seg,
        seg_train_args(w, t, label_dir=seg_labels_with_30(w, t)),
        [".png", "label values [30]", "outside 0..20"],
    ),
    "train_seg_flag_scale_range": lambda w, t: (
        train_seg,
        seg_train_args(w, t, "--scale_range", "1.5", "0.5"),
        ["--scale_range", "LOW <= HIGH"],
    ),
    "train_seg_duplicate_list": lambda w, t: (
        train_seg,
        seg_train_args(w, t, "--train_list", write_list(t, f"{w['ids'][0]}\n{w['ids'][0]}\n")),
        ["list.txt", "duplicate"],
    ),
    "infer_seg_flag_scales_zero": lambda w, t: (
        infer_seg,
        seg_infer_args(w, t, "--scales", "1.0", "0"),
        ["--scales", "(0, 4]"],
    ),
    "infer_seg_flag_scales_word": lambda w, t: (
        infer_seg,
        seg_infer_args(w, t, "--scales", "big"),
        ["--scales", "'big'"],
    ),
    "infer_seg_weights_of_another_head": lambda w, t: (
        infer_seg,
        seg_infer_args(w, t),
        ["--weights", "cls.pth"],
    ),
    # ---- the label cache (docs/formats.md#label-cache)
    "train_labels_other_root": lambda w, t: (
        train_cls_ser,
        train_args(w, t, "--cls_labels", labels_of_root(w, t, t / "elsewhere")),
        ["--cls_labels", "labels.npz", "was built from", "--voc12_root"],
    ),
    "train_labels_not_of_this_dataset": lambda w, t: (
        train_cls_ser,
        train_args(w, t, "--cls_labels", labels_of_root(w, t, None, flip=True)),
        ["--cls_labels", "labels.npz", "differs from"],
    ),
    "train_labels_truncated": lambda w, t: (
        train_cls_ser,
        train_args(w, t, "--cls_labels", truncated(w["base"] / "cls_labels.npz", t, "cut_labels.npz")),
        ["cut_labels.npz", "not a class label file"],
    ),
    "make_cls_labels_no_devkit": lambda w, t: (
        make_cls_labels,
        ["--voc12_root", t / "none", "--out", t / "labels.npz", "--list_dir", t],
        ["--voc12_root", "none", "not a folder"],
    ),
    "make_toy_voc_flag_size": lambda w, t: (toy_voc, ["--out", t / "toy", "--size", "8"], ["--size", ">= 32"]),
    "make_toy_voc_into_a_foreign_folder": lambda w, t: (
        toy_voc,
        ["--out", w["prev"], "--num_train", "1"],  # not a toy set: it could be a real devkit
        ["--out", "not empty", "not made by make_toy_voc"],
    ),
}

VGG_CLS = ("--network", "network.vgg16_cls_ser")


def labels_of_root(w, tmp: Path, voc12_root: Path | None, flip: bool = False) -> Path:
    """A copy of the label cache recorded as built from ``voc12_root`` (None: a shipped, folder-free file);
    ``flip`` inverts every label, as another dataset reusing VOC ids would have them."""
    labels = load_cls_labels(w["base"] / "cls_labels.npz")
    if flip:
        labels = {k: 1.0 - v for k, v in labels.items()}
    save_cls_labels(tmp / "labels.npz", labels, voc12_root)
    return tmp / "labels.npz"


def pred_dir_with(w, tmp: Path, label: np.ndarray) -> Path:
    folder = tmp / "pred"
    for image_id in w["ids"]:
        save_png(folder / f"{image_id}.png", load_label_png(w["base"] / "pred" / f"{image_id}.png"), color_map())
    save_png(folder / f"{w['ids'][1]}.png", label)
    return folder


def truncated_cam_dir(w, tmp: Path) -> Path:
    folder = cam_dir_with(w, tmp, [3])
    target = folder / f"{w['ids'][1]}.npz"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return folder


def empty_file(tmp: Path) -> Path:
    (tmp / "empty.pth").write_bytes(b"")
    return tmp / "empty.pth"


def random_file(tmp: Path, name: str = "random.pth") -> Path:
    (tmp / name).write_bytes(np.random.default_rng(0).bytes(4096))
    return tmp / name


def out_rw_is_file(w, tmp: Path) -> list:
    (tmp / "taken").write_text("a file where the output folder should go\n")
    argv = aff_args(w)
    argv[argv.index("--out_rw") + 1] = tmp / "taken"
    return argv


def out_cam_is_file(w, tmp: Path) -> list:
    (tmp / "taken").write_text("a file where the output folder should go\n")
    argv = cls_infer_args(w)
    argv[argv.index("--out_cam") + 1] = tmp / "taken"
    return argv


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, world, tmp_path, capsys):
    module, argv, expected = CASES[case](world, tmp_path)
    before = tree_hashes(world["base"])
    code, err = run_script(module, argv, capsys)
    assert code == 1, err
    message = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert "weights_only=False" not in err  # torch's advice to load unsafely is never passed on
    after = tree_hashes(world["base"])
    assert {k: v for k, v in after.items() if k in before} == before  # nothing written before was changed
    new = [k for k in after if k not in before and not k.endswith((".log", ".jsonl"))]
    assert not new, new


# --------------------------------------------------------------------------- inference tolerates duplicates


def test_inference_warns_and_deduplicates_a_repeated_id(world, tmp_path, capsys):
    ids = world["ids"]
    list_path = write_list(tmp_path, "\n".join([ids[0], ids[1], ids[0]]) + "\n")
    argv = aff_args(world, list_path=list_path)
    argv[argv.index("--out_rw") + 1] = tmp_path / "rw"
    summary = cli.run(infer_aff.main, infer_aff.get_args_parser(), [str(a) for a in argv])
    assert summary["images"] == 2 and summary["done"] == 2
    log = capsys.readouterr().out  # the scripts log to stdout
    assert "WARNING" in log and "list.txt: 1 duplicate id(s)" in log and "each is processed once" in log
    assert sorted(p.name for p in (tmp_path / "rw").iterdir()) == sorted(f"{i}.png" for i in ids[:2])


# --------------------------------------------------------------------------- old score files still load


def test_score_files_without_kind_still_load(world, tmp_path):
    from tool.fileio import load_scores

    folder = old_crf_folder(world, tmp_path)
    keys, scores = load_scores(folder / f"{world['ids'][0]}.npz", kind="crf")
    assert keys[0] == 0 and scores.shape[1:] == image_shape(world, world["ids"][0])
    cam = tmp_path / "old_cam.npz"
    np.savez(cam, keys=np.array([0, 14]), scores=np.full((2, 8, 8), 0.7, np.float16))
    keys, scores = load_scores(cam, kind="cam")  # 0 = aeroplane; scores do not sum to 1: a CAM file
    assert keys.tolist() == [0, 14] and scores.dtype == np.float32


# --------------------------------------------------------------------------- faults


def test_saved_weights_are_the_same_bytes_whatever_the_temp_name(tmp_path):
    # The archive inside a .pth is not named after the temporary file, so equal weights give equal files.
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torchutils.save_atomic(state, tmp_path / "a.pth")
    torchutils.save_atomic(state, tmp_path / "b.pth")
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()
    torch.testing.assert_close(torch.load(tmp_path / "a.pth", weights_only=True)["w"], state["w"])


def test_disk_full_while_saving_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "sess_checkpoint.pth"
    torchutils.save_atomic({"step": 1}, path)
    old = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(cli.InputError, match=r"sess_checkpoint\.pth: no space left on the device"):
        torchutils.save_atomic({"step": 2}, path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sess_checkpoint.pth"]  # no temp file left


def test_training_removes_temp_files_of_a_killed_checkpoint_save(world, tmp_path, capsys):
    stale = tmp_path / ".sess_checkpoint.k1ll3d.tmp.pth"  # the name atomic_path gives a checkpoint being saved
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other_run.abc.tmp.pth"  # another session's file is left alone
    other.write_bytes(b"x")
    code, err = run_script(train_cls_ser, train_args(world, tmp_path, "--max_steps", "1"), capsys)
    assert code == 0, err
    assert not stale.exists() and other.exists()
    assert (tmp_path / "sess_checkpoint.pth").is_file()


CRF_POOL_SCRIPT = """
import sys, time
from infer_cls_ser import CrfPool
pool = CrfPool(2)
print(" ".join(str(pid) for pid in pool.executor._processes), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running and not a zombie (a container's PID 1 may never reap the orphans it inherits)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_crf_workers_exit_when_the_parent_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", CRF_POOL_SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)
    finally:
        proc.kill()
        for pid in workers if "workers" in locals() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- voc12.make_sbd_aug


def sbd_tree(tmp: Path) -> dict:
    """SBD cls/ with two masks and a VOC tree with one own mask; ``2008_000000`` sorts first."""
    import scipy.io

    sbd, voc = tmp / "dataset", tmp / "VOC2012"
    (sbd / "cls").mkdir(parents=True)
    for image_id in ("2008_000000", "2008_000001"):
        seg = np.full((6, 9), 7, np.uint8)
        scipy.io.savemat(sbd / "cls" / f"{image_id}.mat", {"GTcls": {"Segmentation": seg}})
    save_png(voc / "SegmentationClass" / "2008_000002.png", np.zeros((4, 5), np.uint8), color_map())
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2008_000000\n")
    (sets / "val.txt").write_text("2008_000001\n")
    (tmp / "train_aug.txt").write_text("2008_000002\n")  # a list written before: left as it is
    return {"sbd": sbd, "voc": voc, "first_mat": sbd / "cls" / "2008_000000.mat"}


def _mat_without_struct(t: dict) -> None:
    import scipy.io

    scipy.io.savemat(t["first_mat"], {"Segmentation": np.zeros((6, 9), np.uint8)})


def _mat_truncated(t: dict) -> None:
    data = t["first_mat"].read_bytes()
    t["first_mat"].write_bytes(data[: len(data) // 2])


def _rgb_voc_mask(t: dict) -> None:
    Image.new("RGB", (5, 4), (128, 0, 0)).save(t["voc"] / "SegmentationClass" / "2008_000000.png")


SBD_CASES = {
    "mat_without_struct": (_mat_without_struct, {}, ["2008_000000.mat", "expected a MATLAB struct 'GTcls'"]),
    "mat_truncated": (_mat_truncated, {}, ["2008_000000.mat", "not a readable MATLAB file"]),
    "voc_mask_rgb": (_rgb_voc_mask, {}, ["2008_000000.png", "not a readable VOC label PNG", "mode 'RGB'"]),
    "no_sbd_cls": (lambda t: None, {"--sbd_root": "nowhere"}, ["--sbd_root", "nowhere"]),
    "no_devkit": (lambda t: None, {"--voc12_root": "nowhere"}, ["--voc12_root", "nowhere", "not a folder"]),
}


@pytest.mark.parametrize("case", sorted(SBD_CASES))
def test_make_sbd_aug_bad_input(case, tmp_path, capsys):
    spoil, flags, expected = SBD_CASES[case]
    tree = sbd_tree(tmp_path)
    spoil(tree)
    argv = {"--sbd_root": tree["sbd"], "--voc12_root": tree["voc"], "--list_dir": tmp_path}
    argv.update({flag: tmp_path / name for flag, name in flags.items()})
    before = tree_hashes(tmp_path)
    code, err = run_script(make_sbd_aug, [a for pair in argv.items() for a in pair], capsys)
    assert code == 1, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert tree_hashes(tmp_path) == before  # no mask written (the bad file sorts first), the old list intact
