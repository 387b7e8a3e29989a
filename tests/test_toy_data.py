"""The toy dataset generators: VOC (unchanged by the renderer split), COCO-2014 and the user folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from coco14.dataset import CATEGORIES
from coco14.make_toy_coco import (
    TOY_TO_COCO,
    make_toy_coco,
    mask_polygons,
    plan_images,
    uncompressed_rle,
)
from folder import make_toy_folder as toy_folder
from folder.make_toy_folder import make_toy_folder
from tool.dataset import color_map
from voc12.make_toy_voc import TOY_CLASSES, make_toy_voc, render_toy_scene

NUM_TRAIN, NUM_VAL, SIZE, SEED = 10, 4, 64, 0
# pycocotools' decode hands numpy 2 an array without the copy keyword; a warning from the library, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def tree_digest(root: Path, pixels: bool = False) -> str:
    """md5 over every file's relative path and bytes, in path order; with ``pixels``, images count by their
    decoded mode, size, pixels and palette instead of their encoded bytes."""
    digest = hashlib.md5()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        if pixels and path.suffix in (".png", ".jpg"):
            with Image.open(path) as img:
                digest.update(img.mode.encode() + repr(img.size).encode() + np.asarray(img).tobytes())
                if img.mode == "P":
                    digest.update(bytes(img.getpalette()))
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------- VOC: the refactor changed no byte

# Digests of two small trees written by make_toy_voc before render_toy_scene was split out of it (commit 23931ab),
# with Pillow 13.0.0: (bytes, pixels). The encoded bytes may differ under another Pillow build (its libjpeg and
# zlib); the decoded pixels and the text files do not.
VOC_TREES = {
    "default_aug": (
        {"num_train": 6, "num_val": 2, "size": 64, "seed": 7, "with_aug": True},
        ("22abc14d6a4629a8d8625914b5cf3558", "1942d627d4a52d2ce8b0cbc43b6fbb03"),
    ),
    "large_single": (
        {
            "num_train": 4,
            "num_val": 2,
            "size": 64,
            "seed": 1000,
            "min_extent": 0.3,
            "max_extent": 0.9,
            "max_objects": 1,
            "void_width": 2,
        },
        ("86980831f629c4e94865fee866c4c241", "f1c77efacce9df87481cb16f68c2fc22"),
    ),
}
RECORDED_WITH_PILLOW = "13.0.0"


@pytest.mark.parametrize("name", sorted(VOC_TREES))
def test_voc_tree_pixels_and_text_are_those_before_the_refactor(tmp_path, name):
    params, (_, pixel_digest) = VOC_TREES[name]
    make_toy_voc(tmp_path / name, **params)
    assert tree_digest(tmp_path / name, pixels=True) == pixel_digest


@pytest.mark.skipif(PIL.__version__ != RECORDED_WITH_PILLOW, reason="encoded bytes recorded with another Pillow")
@pytest.mark.parametrize("name", sorted(VOC_TREES))
def test_voc_tree_bytes_are_those_before_the_refactor(tmp_path, name):
    params, (byte_digest, _) = VOC_TREES[name]
    make_toy_voc(tmp_path / name, **params)
    assert tree_digest(tmp_path / name) == byte_digest


# --------------------------------------------------------------------------- COCO-2014


@pytest.fixture(scope="module")
def toy_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "coco"
    summary = make_toy_coco(root, NUM_TRAIN, NUM_VAL, size=SIZE, seed=SEED)
    return root, summary


def load_instances(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_coco_layout_and_image_ids(toy_coco):
    root, summary = toy_coco
    assert (root / "toy_coco.json").is_file()
    assert not (root / "SegmentationClass").exists()  # coco14.prepare writes the masks
    all_ids = []
    for split, count in (("train2014", NUM_TRAIN), ("val2014", NUM_VAL)):
        data = load_instances(root, split)
        assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
        images = data["images"]
        assert len(images) == count == len(list((root / split).glob("*.jpg")))
        ids = [image["id"] for image in images]
        assert ids == sorted(ids)
        for image in images:
            assert image["file_name"] == f"COCO_{split}_{image['id']:012d}.jpg"
            with Image.open(root / split / image["file_name"]) as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                assert img.size == (image["width"], image["height"])
        assert summary[split[:-4]] == [Path(image["file_name"]).stem for image in images]
        all_ids += ids
    assert len(set(all_ids)) == len(all_ids)  # one id space over both splits, as in COCO
    steps = np.diff(sorted(all_ids))
    assert steps.min() >= 2  # ids with gaps, never contiguous


def test_coco_categories_are_the_real_80(toy_coco):
    root, _ = toy_coco
    for split in ("train2014", "val2014"):
        data = load_instances(root, split)
        categories = data["categories"]
        assert [(c["id"], c["name"]) for c in categories] == [(i, n.replace("_", " ")) for i, n in CATEGORIES]
        assert {"traffic light", "tv", "airplane"} <= {c["name"] for c in categories}
        assert {c["supercategory"] for c in categories if c["id"] in (1, 5, 72)} == {"person", "vehicle", "electronic"}
        used = {ann["category_id"] for ann in data["annotations"]}
        assert used <= set(TOY_TO_COCO.values())
    assert TOY_TO_COCO == {"aeroplane": 5, "bird": 16, "car": 3, "cat": 17, "person": 1, "tvmonitor": 72}


def rendered_instances(summary: dict) -> dict[int, list[tuple[int, np.ndarray]]]:
    """``{image id: [(category id, visible mask)]}`` rendered again from the generator's plan."""
    params = summary["params"]
    found = {}
    for entry in plan_images(NUM_TRAIN, NUM_VAL, SEED, params["min_extent"], params["max_extent"]):
        _, owner, classes = render_toy_scene(
            entry.index,
            SEED,
            SIZE,
            entry.primary_class,
            entry.primary_extent,
            params["min_extent"],
            params["max_extent"],
            params["max_objects"],
        )
        instances = [(TOY_TO_COCO[TOY_CLASSES[c].name], owner == k + 1) for k, c in enumerate(classes)]
        found[entry.image_id] = [(cat, mask) for cat, mask in instances if mask.any()]
    return found


def test_coco_annotations_decode_to_the_rendered_instances(toy_coco):
    root, summary = toy_coco
    instances = rendered_instances(summary)
    kinds = set()
    for split in ("train2014", "val2014"):
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        for image_id in coco.getImgIds():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
            assert len(anns) == len(instances[image_id])  # one annotation per visible instance
            for ann, (category_id, mask) in zip(anns, instances[image_id], strict=True):
                decoded = coco.annToMask(ann).astype(bool)
                assert ann["category_id"] == category_id
                assert ann["area"] == mask.sum()
                rows, cols = np.nonzero(mask)
                assert ann["bbox"] == [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]
                if isinstance(ann["segmentation"], list):
                    kinds.add("polygon")
                    assert ann["iscrowd"] == 0 and all(len(p) >= 6 for p in ann["segmentation"])
                    assert iou(decoded, mask) > 0.8
                else:
                    counts = ann["segmentation"]["counts"]
                    kinds.add("crowd" if ann["iscrowd"] else "rle")
                    if ann["iscrowd"]:  # uncompressed RLE
                        assert isinstance(counts, list) and all(isinstance(c, int) for c in counts)
                    else:
                        assert isinstance(counts, str)
                    assert np.array_equal(decoded, mask)
    assert kinds == {"polygon", "rle", "crowd"}
    assert summary["encodings"]["polygon"] > summary["encodings"]["rle"] > 0 and summary["encodings"]["crowd"] > 0


def test_coco_has_images_without_annotations(toy_coco):
    root, summary = toy_coco
    for split in ("train2014", "val2014"):
        data = load_instances(root, split)
        annotated = {ann["image_id"] for ann in data["annotations"]}
        unannotated = [image for image in data["images"] if image["id"] not in annotated]
        assert unannotated, f"{split}: every image has an annotation"  # the split's first image has none
        assert {Path(image["file_name"]).stem for image in unannotated} <= set(summary["empty"])


def test_coco_same_seed_same_bytes_and_refusal(toy_coco, tmp_path):
    root, _ = toy_coco
    again = tmp_path / "again"
    make_toy_coco(again, NUM_TRAIN, NUM_VAL, size=SIZE, seed=SEED)
    assert file_bytes(again) == file_bytes(root)
    make_toy_coco(tmp_path / "other", NUM_TRAIN, NUM_VAL, size=SIZE, seed=SEED + 1)
    assert file_bytes(tmp_path / "other") != file_bytes(root)
    make_toy_coco(again, 2, 1, size=SIZE, seed=SEED)  # a previous toy set may be replaced, no stale images left
    assert len(list((again / "train2014").iterdir())) == 2
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "train2014").mkdir()
    with pytest.raises(FileExistsError, match="not made by make_toy_coco"):
        make_toy_coco(tmp_path / "real", 2, 1, size=SIZE)


def test_polygons_with_holes_and_parts_give_back_the_mask():
    mask = np.zeros((9, 12), dtype=bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False  # a hole: a 7x7 square ring of 49 - 9 = 40 pixels
    mask[2:4, 9:11] = True  # a second part, 2x2
    mask[4, 4] = True  # an island inside the hole
    polygons = mask_polygons(mask)
    assert len(polygons) == 3  # the ring (its hole joined by a cut), the 2x2 part, the island
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 9, 12))).astype(bool)
    assert np.array_equal(decoded, mask)


def test_uncompressed_rle_by_hand():
    # Column-major order: column 0 = [1, 0], column 1 = [1, 1], column 2 = [0, 0] -> 1 0 1 1 0 0.
    mask = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    assert uncompressed_rle(mask) == {"counts": [0, 1, 1, 2, 2], "size": [2, 3]}  # starts with a run of zeros
    assert uncompressed_rle(~mask) == {"counts": [1, 1, 2, 2], "size": [2, 3]}  # 0 1 0 0 1 1
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(uncompressed_rle(mask), 2, 3)), mask)


# --------------------------------------------------------------------------- the user folder


@pytest.fixture(scope="module")
def toy_user_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "folder"
    summary = make_toy_folder(root, NUM_TRAIN, NUM_VAL, size=SIZE, seed=SEED)
    return root, summary


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_folder_layout_lists_and_classes(toy_user_folder):
    root, summary = toy_user_folder
    assert (root / "toy_folder.json").is_file()
    classes = read_lines(root / "classes.txt")
    assert len(classes) == 5 and len(set(classes)) == 5 and all(name and " " not in name for name in classes)
    assert classes == summary["classes"] and "tvmonitor" not in classes
    images = {p.stem: p for p in (root / "images").iterdir()}
    assert len(images) == NUM_TRAIN + NUM_VAL
    assert {p.stem for p in (root / "masks").glob("*.png")} == set(images)
    train, val = read_lines(root / "train.txt"), read_lines(root / "val.txt")
    assert len(train) == NUM_TRAIN and len(val) == NUM_VAL and set(train) | set(val) == set(images)
    assert not set(train) & set(val)
    assert not any(image_id.startswith("20") for image_id in images)  # not VOC-like
    assert {image_id.split("_")[0].split("-")[0].rstrip("0123456789") for image_id in images} >= {"img", "photo"}


def test_folder_labels_parse_and_match_the_masks(toy_user_folder):
    root, summary = toy_user_folder
    classes = read_lines(root / "classes.txt")
    lines = read_lines(root / "labels.txt")
    ids = [line.split()[0] for line in lines]
    assert sorted(ids) == sorted(p.stem for p in (root / "images").iterdir())
    forms = set()
    for line in lines:
        image_id, *tokens = line.split()
        for token in tokens:
            assert token in classes or token in {"1", "2", "3", "4", "5"}, line
        forms.add("empty" if not tokens else "index" if tokens[0].isdigit() else "name")
        indices = sorted(int(t) if t.isdigit() else classes.index(t) + 1 for t in tokens)
        with Image.open(root / "masks" / f"{image_id}.png") as img:
            mask = np.asarray(img)
        assert indices == [k for k in range(1, 6) if (mask == k).any()]
    assert forms == {"empty", "index", "name"}
    assert summary["empty"] == [line for line in lines if " " not in line]


def test_folder_masks_and_image_modes(toy_user_folder):
    root, summary = toy_user_folder
    modes, extensions = [], []
    for image_path in sorted((root / "images").iterdir()):
        with Image.open(image_path) as img:
            modes.append(img.mode)
            size = img.size
            assert img.format == ("PNG" if image_path.suffix == ".png" else "JPEG")
        extensions.append(image_path.suffix)
        with Image.open(root / "masks" / f"{image_path.stem}.png") as mask_img:
            assert mask_img.mode == "P" and mask_img.size == size
            assert np.array_equal(np.asarray(mask_img.getpalette(), np.uint8).reshape(-1, 3), color_map()[:256])
            assert set(np.unique(np.asarray(mask_img)).tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    assert {"L", "P", "RGBA", "RGB"} <= set(modes)
    assert {".jpg", ".jpeg", ".png"} <= set(extensions)
    assert modes.count("RGB") > len(modes) / 2  # most are RGB JPEG
    assert summary["modes"] == {mode: modes.count(mode) for mode in ("RGB", "L", "P", "RGBA")}
    assert toy_folder.CLASS_NAMES == tuple(summary["classes"])


def test_folder_same_seed_same_bytes_and_refusal(toy_user_folder, tmp_path):
    root, _ = toy_user_folder
    again = tmp_path / "again"
    make_toy_folder(again, NUM_TRAIN, NUM_VAL, size=SIZE, seed=SEED)
    assert file_bytes(again) == file_bytes(root)
    make_toy_folder(again, 2, 1, size=SIZE, seed=SEED)  # a previous toy set may be replaced, no stale images left
    assert len(list((again / "images").iterdir())) == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not made by make_toy_folder"):
        make_toy_folder(tmp_path / "mine", 2, 1, size=SIZE)
    with pytest.raises(FileExistsError, match="not made by make_toy_coco"):
        make_toy_coco(root, 2, 1, size=SIZE)  # a toy set of another kind is not a previous toy COCO set
