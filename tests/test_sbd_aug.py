"""voc12.make_sbd_aug: SBD cls/*.mat -> SegmentationClassAug palette PNGs and the train_aug list."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tool.dataset import color_map, load_img_id_list
from tool.fileio import load_label_png, save_png
from voc12 import make_sbd_aug


def write_sbd(path, seg: np.ndarray) -> None:
    """An SBD cls/ file as SBD writes it: struct GTcls with Segmentation, Boundaries and CategoriesPresent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    present = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8)
    scipy.io.savemat(
        path, {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1, object), "CategoriesPresent": present}}
    )


@pytest.fixture
def trees(tmp_path):
    sbd, voc = tmp_path / "benchmark_RELEASE" / "dataset", tmp_path / "VOC2012"
    g = np.random.default_rng(0)
    segs = {f"2008_00000{i}": g.integers(0, 21, (6, 9)).astype(np.uint8) for i in range(4)}
    for image_id, seg in segs.items():
        write_sbd(sbd / "cls" / f"{image_id}.mat", seg)
    # VOC has its own masks for 2008_000001 (also in SBD: VOC wins) and 2008_000009 (VOC only), with void borders.
    voc_masks = {"2008_000001": np.full((6, 9), 255, np.uint8), "2008_000009": np.zeros((4, 5), np.uint8)}
    voc_masks["2008_000001"][1:-1, 1:-1] = 15
    for image_id, mask in voc_masks.items():
        save_png(voc / "SegmentationClass" / f"{image_id}.png", mask, color_map())
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2008_000001\n2008_000009\n")
    (sets / "val.txt").write_text("2008_000003\n")
    return {"sbd": sbd, "voc": voc, "segs": segs, "voc_masks": voc_masks, "lists": tmp_path / "lists"}


def run(trees, *extra):
    argv = ["--sbd_root", str(trees["sbd"]), "--voc12_root", str(trees["voc"]), "--list_dir", str(trees["lists"])]
    return make_sbd_aug.main(make_sbd_aug.get_args_parser().parse_args(argv + list(extra)))


def test_masks_palette_precedence_and_list(trees):
    summary = run(trees)
    aug = trees["voc"] / "SegmentationClassAug"
    assert sorted(p.name for p in aug.iterdir()) == [f"2008_00000{i}.png" for i in (0, 1, 2, 3, 9)]
    assert summary["sbd"] == 3 and summary["voc"] == 2 and summary["skipped"] == 0
    for image_id in ("2008_000000", "2008_000002", "2008_000003"):
        np.testing.assert_array_equal(load_label_png(aug / f"{image_id}.png"), trees["segs"][image_id])
    for image_id, mask in trees["voc_masks"].items():  # VOC's own annotation, void borders included
        np.testing.assert_array_equal(load_label_png(aug / f"{image_id}.png"), mask)
    with Image.open(aug / "2008_000000.png") as img:
        assert img.mode == "P"
        assert np.array_equal(np.array(img.getpalette()[:63]).reshape(21, 3), color_map()[:21])
    # train_aug = every mask minus val (2008_000003), sorted.
    expected = ["2008_000000", "2008_000001", "2008_000002", "2008_000009"]
    assert load_img_id_list(trees["lists"] / "train_aug.txt") == expected


def test_resumes_and_cleans_temp_files(trees):
    run(trees)
    aug = trees["voc"] / "SegmentationClassAug"
    (aug / "2008_000002.png").unlink()  # as if killed before this one...
    (aug / ".2008_000002.abc123.tmp.png").write_bytes(b"half")  # ...while writing it
    before = (aug / "2008_000000.png").stat().st_mtime_ns
    summary = run(trees)
    assert summary["skipped"] == 4 and summary["sbd"] == 1
    assert (aug / "2008_000000.png").stat().st_mtime_ns == before
    assert not list(aug.glob(".*"))
    np.testing.assert_array_equal(load_label_png(aug / "2008_000002.png"), trees["segs"]["2008_000002"])


def test_existing_different_list_needs_overwrite(trees):
    trees["lists"].mkdir()
    (trees["lists"] / "train_aug.txt").write_text("2008_000000\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run(trees)
    run(trees, "--overwrite")
    assert len(load_img_id_list(trees["lists"] / "train_aug.txt")) == 4


def test_mat_without_the_struct_is_a_clear_error(trees, tmp_path):
    bad = trees["sbd"] / "cls" / "2008_000004.mat"
    scipy.io.savemat(bad, {"Segmentation": np.zeros((3, 3), np.uint8)})  # the field, but not inside GTcls
    with pytest.raises(ValueError, match=r"2008_000004\.mat: expected a MATLAB struct 'GTcls'.*\['Segmentation'\]"):
        run(trees)
    scipy.io.savemat(bad, {"GTcls": {"Boundaries": np.zeros((3, 3), np.uint8)}})
    with pytest.raises(ValueError, match="struct GTcls has no field 'Segmentation'"):
        make_sbd_aug.load_sbd_segmentation(bad)
    scipy.io.savemat(bad, {"GTcls": {"Segmentation": np.full((3, 3), 40, np.uint8)}})
    with pytest.raises(ValueError, match="outside 0..20 and 255"):
        make_sbd_aug.load_sbd_segmentation(bad)
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="not a readable MATLAB file"):
        make_sbd_aug.load_sbd_segmentation(bad)
    with pytest.raises(FileNotFoundError, match="cls"):
        make_sbd_aug.sources(tmp_path / "nowhere", trees["voc"])
