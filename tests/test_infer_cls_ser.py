"""infer_cls_ser.py (docs/method.md#ssenet-inference): the CAM maths, its files, skipping, atomicity, sharding.

A 3-image toy VOC tree (64 px) and a random-init Net(width_mult=1/8) keep every run to a few seconds on a CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import infer_cls_ser
from network import resnet38d
from network.resnet38_cls_ser import Net
from tests.helpers import fill_reference_weights
from tool import imutils, layout, torchutils
from tool.dataset import color_map
from tool.fileio import atomic_path, load_scores, remove_stale_temps
from voc12.make_cls_labels import load_or_build_cls_labels
from voc12.make_toy_voc import make_toy_voc
from voc12.voc import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 0.125
NUM_IMAGES = 3


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Every test here runs with one torch thread (fixture in conftest.py)."""


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """A toy VOC tree, its train list, and random-init weights whose CAM head is non-negative.

    With ``|fc8|`` every class map is >= 0 on the non-negative conv6 features, so every present class
    has a non-zero map and its normalised maximum is ~1 (a signed head could leave a class all zero).
    """
    base = tmp_path_factory.mktemp("infer_cls")
    root = base / "VOC2012"
    make_toy_voc(root, num_train=NUM_IMAGES, num_val=1, size=64, seed=0)
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert len(ids) == NUM_IMAGES
    torch.manual_seed(0)
    model = Net(width_mult=WIDTH)
    with torch.no_grad():
        model.fc8.weight.abs_()
    torch.save(model.state_dict(), base / "weights.pth")
    # Built here so that no test's run writes the label cache (the crash test counts renames).
    load_or_build_cls_labels(root, ids, base / "cls_labels.npz")
    return {"base": base, "root": root, "ids": ids, "weights": base / "weights.pth"}


def make_args(toy: dict, out: Path, *extra: str, outputs: bool = True):
    argv = [
        "--weights",
        str(toy["weights"]),
        "--width_mult",
        str(WIDTH),
        "--voc12_root",
        str(toy["root"]),
        "--infer_list",
        str(toy["root"] / "ImageSets" / "Segmentation" / "train.txt"),
        "--cls_labels",
        str(toy["base"] / "cls_labels.npz"),
        "--num_workers",
        "0",
        "--device",
        "cpu",
    ]
    if outputs:
        argv += ["--out_cam", str(out / "cam"), "--out_cam_pred", str(out / "pred"), "--out_crf", str(out / "crf")]
        argv += ["--out_vis", str(out / "vis")]
    return infer_cls_ser.get_args_parser().parse_args([*argv, *extra])


def image_classes(root: Path, image_id: str) -> np.ndarray:
    """Sorted 0-based indices of the object classes in the XML annotation, read independently of voc12/."""
    names = {obj.findtext("name") for obj in ET.parse(root / "Annotations" / f"{image_id}.xml").findall("object")}
    return np.array(sorted(CLASS_NAMES.index(n) for n in names), dtype=np.int64)


def output_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in output_files(out)}


def assert_outputs_readable(out: Path) -> None:
    """Every visible file is a complete score file or PNG."""
    for path in output_files(out):
        if path.name.startswith("."):
            continue
        if path.suffix == ".npz":
            keys, scores = load_scores(path)
            assert scores.shape[0] == keys.size and scores.ndim == 3
        else:
            with Image.open(path) as img:
                img.load()


# --------------------------------------------------------------------------- the maths


def test_infer_cams_equals_direct_computation():
    torch.manual_seed(0)
    model = fill_reference_weights(Net(width_mult=WIDTH), seed=3).eval()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(37, 50, 3), dtype=np.uint8))
    inputs = [torch.from_numpy(x) for x in imutils.msf_inputs(image, (1.0, 0.5, 1.5, 2.0), resnet38d.normalize)]
    label = torch.zeros(20)
    label[[2, 7, 14]] = 1

    norm_cam = infer_cls_ser.infer_cams(model, inputs, label, (37, 50), torch.device("cpu"))

    # docs/method.md#ssenet-inference by hand: 8 forwards, ReLU, resize to 37 x 50, mask, un-flip, sum, max-norm.
    total = torch.zeros(20, 37, 50)
    raw_min = np.inf
    with torch.no_grad():
        for pair in inputs:
            for flipped in (0, 1):
                raw = model(pair[flipped : flipped + 1])
                raw_min = min(raw_min, raw[0, [2, 7, 14]].min().item())
                cam = F.relu(raw)
                cam = F.interpolate(cam, size=(37, 50), mode="bilinear", align_corners=False)[0]
                cam = cam * label[:, None, None]
                total += cam.flip(-1) if flipped else cam
    expected = total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)

    assert raw_min < 0  # the signed head gives negative scores, so the ReLU is exercised
    assert norm_cam.shape == (20, 37, 50) and norm_cam.dtype == np.float32
    np.testing.assert_allclose(norm_cam, expected.numpy(), atol=1e-5)
    absent = np.setdiff1d(np.arange(20), [2, 7, 14])
    assert not norm_cam[absent].any()
    # With this seed class 14 never fires (all maps <= 0 -> normalised map 0); 2 and 7 peak at M / (M + 1e-5).
    peaks = total.amax(dim=(1, 2))[[2, 7, 14]]
    assert (peaks[:2] > 0).all() and peaks[2] == 0
    np.testing.assert_allclose(norm_cam[[2, 7, 14]].max(axis=(1, 2)), (peaks / (peaks + 1e-5)).numpy(), rtol=1e-6)


def test_infer_cams_without_classes_skips_the_network():
    class Boom(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("no class is present, the network must not run")

    inputs = [torch.zeros(2, 3, 8, 8)]
    out = infer_cls_ser.infer_cams(Boom(), inputs, torch.zeros(20), (8, 8), torch.device("cpu"))
    assert out.shape == (20, 8, 8) and not out.any()


def test_cam_prediction_hand_values():
    norm_cam = np.zeros((20, 1, 4), np.float32)
    norm_cam[3, 0, 1] = 0.5  # pixel 1: class 3 beats bg 0.2 -> label 4
    norm_cam[0, 0, 2] = 0.2  # pixel 2: tie with the background score -> background
    norm_cam[5, 0, 3], norm_cam[7, 0, 3] = 0.9, 0.95  # pixel 3: class 7 -> label 8
    np.testing.assert_array_equal(infer_cls_ser.cam_prediction(norm_cam, 0.2), [[0, 4, 0, 8]])
    # A background score above every CAM makes everything background.
    np.testing.assert_array_equal(infer_cls_ser.cam_prediction(norm_cam, 0.96), [[0, 0, 0, 0]])


def test_crf_dir_names_alpha_as_float():
    assert layout.crf_dir("out/crf", 4) == Path("out/crf_4.0")
    assert layout.crf_dir("out/crf", 24.0) == Path("out/crf_24.0")
    assert layout.crf_dir("out/crf", 0.5) == Path("out/crf_0.5")
    assert layout.la_ha_crf_dirs("out/crf", [20, 3]) == (Path("out/crf_3.0"), Path("out/crf_20.0"))


# --------------------------------------------------------------------------- a full run


@pytest.fixture(scope="module")
def first_run(toy) -> tuple[Path, dict]:
    out = toy["base"] / "run"
    # float32 scores so the PNG can be checked exactly against the stored CAMs; one CRF worker process.
    args = make_args(toy, out, "--score_dtype", "float32", "--crf_workers", "1", "--num_workers", "1")
    return out, infer_cls_ser.main(args)


def test_outputs_keys_shapes_ranges(toy, first_run):
    out, summary = first_run
    assert summary["done"] == NUM_IMAGES and summary["skipped"] == 0
    palette = color_map()
    for image_id in toy["ids"]:
        classes = image_classes(toy["root"], image_id)
        with Image.open(toy["root"] / "JPEGImages" / f"{image_id}.jpg") as img:
            rgb = np.asarray(img.convert("RGB"))
        hw = rgb.shape[:2]

        keys, cams = load_scores(out / "cam" / f"{image_id}.npz")
        np.testing.assert_array_equal(keys, classes)
        assert cams.shape == (len(classes), *hw)
        assert cams.min() >= 0 and cams.max() <= 1
        np.testing.assert_allclose(cams.max(axis=(1, 2)), 1.0, atol=1e-4)  # M / (M + 1e-5), M >> 1e-5

        for alpha in (4.0, 24.0):
            crf_keys, crf = load_scores(out / f"crf_{alpha}" / f"{image_id}.npz")
            np.testing.assert_array_equal(crf_keys, np.concatenate([[0], classes + 1]))
            assert crf.shape == (len(classes) + 1, *hw)
            np.testing.assert_allclose(crf.sum(axis=0), 1.0, atol=1e-4)  # CRF marginals

        with Image.open(out / "pred" / f"{image_id}.png") as img:
            assert img.mode == "P"
            np.testing.assert_array_equal(np.asarray(img.getpalette(), np.uint8).reshape(-1, 3), palette)
            pred = np.asarray(img)
        assert pred.shape == hw
        assert set(np.unique(pred)) <= {0, *(classes + 1).tolist()}
        # Recomputed from the stored CAMs: argmax over [0.2, present CAMs], first index wins ties.
        recomputed = np.concatenate([[0], classes + 1])[np.concatenate([np.full((1, *hw), 0.2), cams]).argmax(0)]
        np.testing.assert_array_equal(pred, recomputed)

        with Image.open(out / "vis" / f"{image_id}.png") as img:
            vis = np.asarray(img)
        assert vis.shape == (hw[0], hw[1] * (len(classes) + 1), 3)
        np.testing.assert_array_equal(vis[:, : hw[1]], rgb)
    assert not [p for p in output_files(out) if p.name.startswith(".")], "temporary files left behind"


def test_low_alpha_has_more_background(toy, first_run):
    out, _ = first_run
    background = {alpha: 0 for alpha in (4.0, 24.0)}
    for image_id in toy["ids"]:
        for alpha in background:
            _, crf = load_scores(out / f"crf_{alpha}" / f"{image_id}.npz")
            background[alpha] += int((crf.argmax(axis=0) == 0).sum())
    # bg = (1 - max cam) ** alpha: alpha 4 keeps a large background score, alpha 24 shrinks it.
    assert background[4.0] > background[24.0]


def test_rerun_skips_finished_images(toy, first_run):
    out, _ = first_run
    before = mtimes(out)
    summary = infer_cls_ser.main(make_args(toy, out, "--score_dtype", "float32"))
    assert summary["done"] == 0 and summary["skipped"] == NUM_IMAGES
    assert mtimes(out) == before


def test_missing_output_redoes_only_that_image(toy, tmp_path):
    out = tmp_path / "run"
    infer_cls_ser.main(make_args(toy, out, "--scales", "1.0", "--crf_workers", "0"))
    victim = toy["ids"][1]
    (out / "crf_24.0" / f"{victim}.npz").unlink()
    before = mtimes(out)
    summary = infer_cls_ser.main(make_args(toy, out, "--scales", "1.0", "--crf_workers", "0"))
    assert summary["done"] == 1 and summary["skipped"] == NUM_IMAGES - 1
    after = mtimes(out)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed == {p for p in after if p.stem == victim}
    assert len(changed) == 5  # cam, pred, 2 x crf, vis


def test_overwrite_rewrites(toy, tmp_path):
    out = tmp_path / "run"
    infer_cls_ser.main(make_args(toy, out, "--scales", "1.0", "--crf_workers", "0"))
    for path in output_files(out):
        os.utime(path, ns=(1, 1))
    summary = infer_cls_ser.main(make_args(toy, out, "--scales", "1.0", "--crf_workers", "0", "--overwrite"))
    assert summary["done"] == NUM_IMAGES and summary["skipped"] == 0
    assert all(t > 1 for t in mtimes(out).values())
    keys, _ = load_scores(out / "cam" / f"{toy['ids'][0]}.npz")
    with np.load(out / "cam" / f"{toy['ids'][0]}.npz", allow_pickle=False) as data:
        assert data["scores"].dtype == np.float16  # the default --score_dtype
    np.testing.assert_array_equal(keys, image_classes(toy["root"], toy["ids"][0]))


def test_no_output_flag_is_an_error(toy, tmp_path):
    with pytest.raises(SystemExit, match="nothing to write"):
        infer_cls_ser.main(make_args(toy, tmp_path, outputs=False))


# --------------------------------------------------------------------------- interruption


def test_crash_between_temp_write_and_rename_leaves_no_partial_file(toy, tmp_path, monkeypatch):
    """The 7th rename raises, as a crash right after a temporary file was written would.

    Expected: the run fails, no temporary file remains, every visible file is complete, and the
    next run finishes exactly the images that miss an output.
    """
    out = tmp_path / "run"
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 7:
            raise OSError("simulated crash before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        infer_cls_ser.main(make_args(toy, out, "--scales", "1.0", "--crf_workers", "0"))
    monkeypatch.setattr(os, "replace", real_replace)

    # Image 1 wrote its 5 files, image 2 failed on its second; its first file exists.
    files = output_files(out)
    assert not [p for p in files if p.name.startswith(".")], "temporary file left behind"
    assert len(files) == 6 and not Path(calls[6]).exists()
    assert_outputs_readable(out)

    summary = infer_cls_ser.main(make_args(toy, out, "--scales", "1.0", "--crf_workers", "0"))
    assert summary["done"] == 2 and summary["skipped"] == 1
    assert len(output_files(out)) == 5 * NUM_IMAGES


def test_remove_stale_temps_matches_atomic_path_names(tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / ".2007_0000011.abc_9.tmp.npz").write_bytes(b"other id sharing a prefix")
    (folder / "2007_000001.npz").write_bytes(b"a finished file is never touched")
    with pytest.raises(FileNotFoundError), atomic_path(folder / "2007_000001.npz") as tmp:
        assert Path(tmp).name.startswith(".2007_000001.")
        # The temporary file of an id being recomputed goes; the other id's stays.
        assert remove_stale_temps({folder, tmp_path / "absent"}, {"2007_000001"}) == 1
        assert not Path(tmp).exists()
    assert sorted(p.name for p in folder.iterdir()) == [".2007_0000011.abc_9.tmp.npz", "2007_000001.npz"]


def test_sigkill_midway_then_resume(toy, tmp_path):
    """SIGKILL the script (and its CRF worker) once a first file exists: every visible file must be complete;
    the next run removes the hidden temporary files it left and completes the set."""
    out = tmp_path / "run"
    args = make_args(toy, out, "--crf_workers", "1", "--scales", "1.0")
    argv = [sys.executable, str(ROOT / "infer_cls_ser.py")]
    for key, value in vars(args).items():
        if isinstance(value, bool):
            argv += [f"--{key}"] if value else []
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif value is not None:
            argv += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "cam").is_dir() or not any((out / "cam").glob("*.npz")):
            assert proc.poll() is None, "the script ended before writing anything"
            assert time.monotonic() < deadline, "no output after 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the group started above: the script and its CRF worker
        proc.wait()

    assert_outputs_readable(out)
    visible = [p for p in output_files(out) if not p.name.startswith(".")]
    complete = [i for i in toy["ids"] if sum(p.stem == i for p in visible) == 5]
    summary = infer_cls_ser.main(make_args(toy, out, "--crf_workers", "0", "--scales", "1.0"))
    assert summary["skipped"] == len(complete) and summary["done"] == NUM_IMAGES - len(complete)
    files = output_files(out)
    assert not [p for p in files if p.name.startswith(".")]
    assert len(files) == 5 * NUM_IMAGES
    assert_outputs_readable(out)


def test_crf_pool_reports_a_failed_job(tmp_path):
    image = np.zeros((4, 5, 3), np.uint8)
    bad_cams = np.zeros((2, 4, 5), np.float32)  # 2 maps for 1 key: crf_scores_with_alpha rejects it
    with pytest.raises(RuntimeError, match="bad.npz"), infer_cls_ser.CrfPool(1) as pool:
        pool.submit(tmp_path / "bad.npz", image, np.array([3]), bad_cams, 4.0, "float16")
        pool.close()
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- torchrun sharding


def test_each_rank_writes_its_share(toy, tmp_path, monkeypatch):
    """Two ranks of a world of 2, run one after the other: rank r writes ids[r::2] only."""
    out = tmp_path / "run"
    monkeypatch.setattr(torchutils, "get_world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(torchutils, "get_rank", lambda rank=rank: rank)
        summary = infer_cls_ser.main(make_args(toy, out, "--scales", "1.0", "--crf_workers", "0"))
        assert summary["done"] == len(toy["ids"][rank::2]) and summary["skipped"] == 0
        written = {p.stem for p in (out / "cam").glob("*.npz")}
        assert written == (set(toy["ids"]) if rank else set(toy["ids"][0::2]))


def test_atomic_outputs_get_umask_permissions(tmp_path):
    # mkstemp makes 0600 files; outputs must be readable like any file the user writes.
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "x.txt") as tmp:
            Path(tmp).write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644
