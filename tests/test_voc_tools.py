"""Tests for the toy VOC generator and the class-label / list tool (docs/method.md#data)."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tool.dataset import color_map, load_img_id_list
from tool.fileio import load_cls_labels
from voc12 import make_cls_labels as mcl
from voc12.make_toy_voc import make_toy_voc
from voc12.voc import CLASS_NAMES

NUM_TRAIN, NUM_VAL, SIZE, SEED = 6, 3, 96, 0


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "VOC2012"
    make_toy_voc(root, NUM_TRAIN, NUM_VAL, SIZE, SEED, with_aug=True)
    return root


def read_objects(xml_path: Path) -> tuple[ET.Element, list[tuple[str, tuple[int, int, int, int]]]]:
    root = ET.parse(xml_path).getroot()
    objects = []
    for obj in root.findall("object"):
        box = tuple(int(obj.find("bndbox").findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((obj.findtext("name"), box))
    return root, objects


def all_ids(root: Path) -> list[str]:
    return load_img_id_list(root / "ImageSets" / "Segmentation" / "trainval.txt")


def read_mask(root: Path, image_id: str) -> np.ndarray:
    with Image.open(root / "SegmentationClass" / f"{image_id}.png") as img:
        assert img.mode == "P"
        return np.asarray(img)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Chebyshev-radius dilation by shifting, written independently of the generator's PIL filters."""
    padded = np.pad(mask, radius)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- toy dataset layout


def test_lists_and_files(toy_root):
    sets = toy_root / "ImageSets" / "Segmentation"
    train, val = load_img_id_list(sets / "train.txt"), load_img_id_list(sets / "val.txt")
    assert len(train) == NUM_TRAIN and len(val) == NUM_VAL and not set(train) & set(val)
    assert load_img_id_list(sets / "train_aug.txt") == train
    assert sorted(load_img_id_list(sets / "trainval.txt")) == sorted(train + val)
    for image_id in train + val:
        assert len(image_id) == 11 and image_id.startswith("2007_")  # VOC-style id
        for folder, ext in (("JPEGImages", "jpg"), ("Annotations", "xml"), ("SegmentationClass", "png")):
            assert (toy_root / folder / f"{image_id}.{ext}").is_file()
        with Image.open(toy_root / "SegmentationClassAug" / f"{image_id}.png") as aug:
            np.testing.assert_array_equal(np.asarray(aug), read_mask(toy_root, image_id))


def test_xml_schema_and_sizes(toy_root):
    for image_id in all_ids(toy_root):
        root, objects = read_objects(toy_root / "Annotations" / f"{image_id}.xml")
        assert root.tag == "annotation" and root.findtext("filename") == f"{image_id}.jpg"
        assert root.findtext("folder") and root.findtext("segmented") == "1"
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        assert root.findtext("size/depth") == "3"
        with Image.open(toy_root / "JPEGImages" / f"{image_id}.jpg") as img:
            assert img.mode == "RGB" and img.size == (width, height)
        assert max(width, height) == SIZE and 0.6 * SIZE <= min(width, height) <= SIZE
        assert read_mask(toy_root, image_id).shape == (height, width)
        assert 1 <= len(objects) <= 3
        for obj in root.findall("object"):
            assert obj.findtext("pose") == "Unspecified"
            assert obj.findtext("truncated") in ("0", "1") and obj.findtext("difficult") == "0"


def test_mask_palette_values_and_classes(toy_root):
    palette = color_map().reshape(-1).tolist()
    for image_id in all_ids(toy_root):
        with Image.open(toy_root / "SegmentationClass" / f"{image_id}.png") as img:
            assert img.mode == "P" and img.getpalette()[: len(palette)] == palette
            mask = np.asarray(img)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}
        _, objects = read_objects(toy_root / "Annotations" / f"{image_id}.xml")
        xml_classes = {CLASS_NAMES.index(name) + 1 for name, _ in objects}
        assert xml_classes == values - {0, 255}


def test_boxes_enclose_mask_pixels(toy_root):
    for image_id in all_ids(toy_root):
        mask = read_mask(toy_root, image_id)
        _, objects = read_objects(toy_root / "Annotations" / f"{image_id}.xml")
        height, width = mask.shape
        for cls in set(np.unique(mask).tolist()) - {0, 255}:
            inside = np.zeros_like(mask, dtype=bool)
            for name, (xmin, ymin, xmax, ymax) in objects:
                if CLASS_NAMES.index(name) + 1 != cls:
                    continue
                assert 1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height  # 1-based inclusive
                inside[ymin - 1 : ymax, xmin - 1 : xmax] = True
                # Tight: every edge of the box touches the object (its pixels or its void border).
                touched = (mask == cls) | (mask == 255)
                box = touched[ymin - 1 : ymax, xmin - 1 : xmax]
                assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            assert not ((mask == cls) & ~inside).any(), f"{image_id}: class {cls} pixels outside its boxes"


def test_void_band_separates_objects(toy_root):
    for image_id in all_ids(toy_root):
        mask = read_mask(toy_root, image_id)
        foreground = (mask > 0) & (mask < 255)
        assert (mask == 255).any()
        # Default band: 2 px outside + 1 px inside the object boundary, so foreground and background pixels are
        # at least 4 px apart (Chebyshev), i.e. no background within radius 3 of a foreground pixel.
        assert not (dilate(foreground, 3) & (mask == 0)).any(), image_id
        for cls in set(np.unique(mask).tolist()) - {0, 255}:
            others = foreground & (mask != cls)
            assert not (dilate(mask == cls, 1) & others).any(), f"{image_id}: classes {cls} touch another class"


def test_object_sizes_vary_at_least_4x(toy_root):
    extents = []
    for image_id in all_ids(toy_root):
        _, objects = read_objects(toy_root / "Annotations" / f"{image_id}.xml")
        extents += [max(xmax - xmin, ymax - ymin) + 1 for _, (xmin, ymin, xmax, ymax) in objects]
    # Extents 0.10 .. 0.50 of the 96 px long side: about 10 px and 48 px.
    assert max(extents) / min(extents) >= 4


def test_deterministic_by_seed(tmp_path, toy_root):
    summary = make_toy_voc(tmp_path / "same", NUM_TRAIN, NUM_VAL, SIZE, SEED, with_aug=True)
    assert tree_bytes(tmp_path / "same") == tree_bytes(toy_root)
    assert len(summary["train"]) == NUM_TRAIN and summary["num_objects"] >= NUM_TRAIN + NUM_VAL
    make_toy_voc(tmp_path / "other", NUM_TRAIN, NUM_VAL, SIZE, SEED + 1, with_aug=True)
    same, other = tree_bytes(toy_root), tree_bytes(tmp_path / "other")
    jpegs = [name for name in same if name.startswith("JPEGImages")]
    assert all(same[name] != other.get(name) for name in jpegs)


def test_refuses_non_toy_folder_and_regenerates_toy_folder(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "JPEGImages").mkdir()
    with pytest.raises(FileExistsError, match="not made by make_toy_voc"):
        make_toy_voc(tmp_path / "real", 2, 1, 64, 0)
    make_toy_voc(tmp_path / "toy", 3, 1, 64, 0)
    make_toy_voc(tmp_path / "toy", 1, 1, 64, 0)  # a smaller set leaves no stale ids behind
    assert len(list((tmp_path / "toy" / "JPEGImages").glob("*.jpg"))) == 2


# ---------------------------------------------------------------- class labels


def test_labels_from_xml_equal_mask_classes(toy_root):
    ids = all_ids(toy_root)
    labels = mcl.build_cls_labels(toy_root, ids)
    assert list(labels) == ids
    for image_id in ids:
        assert labels[image_id].dtype == np.float32 and labels[image_id].shape == (20,)
        mask_classes = set(np.unique(read_mask(toy_root, image_id)).tolist()) - {0, 255}
        expected = np.zeros(20, np.float32)
        expected[[c - 1 for c in mask_classes]] = 1.0
        np.testing.assert_array_equal(labels[image_id], expected)


def write_xml(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)


def test_parse_annotation_errors_name_the_file(tmp_path):
    write_xml(tmp_path / "Annotations" / "bad.xml", "<annotation><object><name>cat</name></annotation>")
    with pytest.raises(ValueError, match=r"bad\.xml: malformed XML"):
        mcl.image_label(tmp_path, "bad")
    unknown = "<annotation><object><name>unicorn</name></object></annotation>"
    write_xml(tmp_path / "Annotations" / "unk.xml", unknown)
    with pytest.raises(ValueError, match=r"unk\.xml: unknown class name 'unicorn'"):
        mcl.image_label(tmp_path, "unk")
    with pytest.raises(FileNotFoundError, match=r"missing\.xml"):
        mcl.build_cls_labels(tmp_path, ["missing"])


def test_parts_and_repeats(tmp_path):
    # VOC 2012 person objects carry <part><name>head</name>; only the object's own name counts.
    body = (
        "<annotation><object><name>person</name><part><name>head</name></part></object>"
        "<object><name> dog </name></object><object><name>person</name></object></annotation>"
    )
    write_xml(tmp_path / "Annotations" / "a.xml", body)
    assert mcl.parse_annotation(tmp_path / "Annotations" / "a.xml") == ["person", "dog", "person"]
    label = mcl.image_label(tmp_path, "a")
    assert label.sum() == 2 and label[CLASS_NAMES.index("person")] == 1 and label[CLASS_NAMES.index("dog")] == 1


def test_cache_built_on_first_use_and_extended(tmp_path, toy_root, monkeypatch):
    ids = all_ids(toy_root)
    cache = tmp_path / "cls_labels.npz"
    first = mcl.load_or_build_cls_labels(toy_root, ids[:4], cache)
    assert list(first) == ids[:4] and cache.is_file()
    with np.load(cache, allow_pickle=False) as data:
        assert data["ids"].dtype.kind == "U" and data["labels"].dtype == np.float32
        assert data["labels"].shape == (4, 20)
    expected = mcl.build_cls_labels(toy_root, ids)
    grown = mcl.load_or_build_cls_labels(toy_root, ids[::-1], cache)  # order follows the request
    assert list(grown) == ids[::-1]
    assert set(mcl.load_cls_labels(cache)) == set(ids)
    for image_id in ids:
        np.testing.assert_array_equal(grown[image_id], expected[image_id])
    # A complete cache is not rebuilt: the annotations are not read again.
    monkeypatch.setattr(mcl, "build_cls_labels", lambda *a: pytest.fail("annotations read again"))
    cached = mcl.load_or_build_cls_labels(toy_root, ids, cache)
    assert all(np.array_equal(cached[i], expected[i]) for i in ids)


def test_load_rejects_pickled_or_wrong_files(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, ids=np.array([{"a": 1}], dtype=object), labels=np.zeros((1, 20), np.float32))
    with pytest.raises(ValueError, match=r"pickled\.npz"):
        mcl.load_cls_labels(pickled)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, ids=np.array(["x"]), labels=np.zeros((1, 21), np.float32))
    with pytest.raises(ValueError, match=r"wrong\.npz: 'labels' has shape \(1, 21\)"):
        load_cls_labels(wrong, 20)


# ---------------------------------------------------------------- lists and CLI


def test_list_line_styles_parse(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\n2007_000039\n")
    assert load_img_id_list(path) == ["2007_000032", "2007_000039"]


def cli_args(root: Path, out_dir: Path, overwrite: bool = False) -> argparse.Namespace:
    argv = ["--voc12_root", str(root), "--out", str(out_dir / "cls_labels.npz"), "--list_dir", str(out_dir)]
    return mcl.get_args_parser().parse_args(argv + (["--overwrite"] if overwrite else []))


def test_cli_writes_lists_and_labels(tmp_path, toy_root):
    sets = toy_root / "ImageSets" / "Segmentation"
    train, val = load_img_id_list(sets / "train.txt"), load_img_id_list(sets / "val.txt")
    labels = mcl.main(cli_args(toy_root, tmp_path))
    assert (tmp_path / "train.txt").read_text() == "".join(f"{i}\n" for i in train)
    assert load_img_id_list(tmp_path / "val.txt") == val
    # train_aug = SegmentationClassAug ids (all 9 here) minus val = train, sorted.
    assert load_img_id_list(tmp_path / "train_aug.txt") == sorted(train)
    assert set(labels) == set(train + val)
    assert set(mcl.load_cls_labels(tmp_path / "cls_labels.npz")) == set(train + val)


def test_cli_does_not_overwrite_lists_silently(tmp_path, toy_root):
    train = load_img_id_list(toy_root / "ImageSets" / "Segmentation" / "train.txt")
    # Same ids in the reference's line style: a no-op, the file is kept as it is.
    reference_style = "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in train)
    (tmp_path / "train.txt").write_text(reference_style)
    mcl.main(cli_args(toy_root, tmp_path))
    assert (tmp_path / "train.txt").read_text() == reference_style
    (tmp_path / "val.txt").write_text("2007_999999\n")
    (tmp_path / "cls_labels.npz").unlink()
    with pytest.raises(FileExistsError, match=r"val\.txt exists with different ids; pass --overwrite"):
        mcl.main(cli_args(toy_root, tmp_path))
    assert not (tmp_path / "cls_labels.npz").exists()
    mcl.main(cli_args(toy_root, tmp_path, overwrite=True))
    assert load_img_id_list(tmp_path / "val.txt") == load_img_id_list(toy_root / "ImageSets/Segmentation/val.txt")


def test_train_aug_fallbacks(tmp_path):
    root = tmp_path / "VOC2012"
    make_toy_voc(root, 3, 2, 64, 1)  # no SegmentationClassAug
    train = load_img_id_list(root / "ImageSets" / "Segmentation" / "train.txt")
    lists, note = mcl.derive_lists(root)
    assert note is None and lists["train_aug"] == train  # copied from ImageSets/Segmentation/train_aug.txt
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    lists, note = mcl.derive_lists(root)
    assert "train_aug" not in lists and "SegmentationClassAug" in note
    mcl.main(cli_args(root, tmp_path / "lists"))
    assert not (tmp_path / "lists" / "train_aug.txt").exists()
    assert (tmp_path / "lists" / "train.txt").is_file()


def test_objects_lost_in_a_wide_void_band_leave_the_xml(tmp_path):
    # A 9 px band swallows the smallest objects of a 64 px set; the XML must still match the mask.
    root = tmp_path / "wide"
    make_toy_voc(root, 8, 2, 64, 0, void_width=9)
    for image_id in all_ids(root):
        _, objects = read_objects(root / "Annotations" / f"{image_id}.xml")
        mask_classes = set(np.unique(read_mask(root, image_id)).tolist()) - {0, 255}
        assert {CLASS_NAMES.index(name) + 1 for name, _ in objects} == mask_classes


def test_label_cache_refuses_another_dataset_folder(tmp_path):
    # Toy ids look like VOC ids, so a cache must remember which folder it was built from.
    from voc12.make_cls_labels import load_or_build_cls_labels

    for name in ("a", "b"):
        make_toy_voc(tmp_path / name, num_train=2, num_val=1, size=64, seed=0 if name == "a" else 1)
    ids = (tmp_path / "a" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    cache = tmp_path / "labels.npz"
    first = load_or_build_cls_labels(tmp_path / "a", ids, cache)
    again = load_or_build_cls_labels(tmp_path / "a", ids, cache)
    assert all(np.array_equal(first[i], again[i]) for i in ids)
    with pytest.raises(ValueError, match="was built from"):
        load_or_build_cls_labels(tmp_path / "b", ids, cache)
