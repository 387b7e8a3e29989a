"""coco14.prepare: COCO instance annotations -> semantic masks of both recipes, lists and image-level labels.

The expected masks are composed here from pycocotools' per-annotation ``annToMask``, by the recipe rules written
out again (docs/datasets.md#coco-2014), and compared pixel by pixel with the PNGs prepare writes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from coco14 import prepare
from tests.helpers import restored_root_logger
from tool import cli
from tool.dataset import color_map, load_img_id_list
from tool.fileio import load_cls_labels, load_label_png

# pycocotools' decode (2.0.x) still calls np.array(..., copy=False) on its own buffer type under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

H, W = 24, 32
# Category ids with gaps: 1 (person) -> mask index 1, 13 (stop sign) -> 12, 90 (toothbrush) -> 80.
PERSON, STOP_SIGN, TOOTHBRUSH = 1, 13, 90
INDEX = {PERSON: 1, STOP_SIGN: 12, TOOTHBRUSH: 80}


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}  # a str, as in the JSON files


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths of the column-major pixels, the first run counting zeros."""
    flat = mask.flatten(order="F")
    starts = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


def polygon(*xy: float) -> list[list[float]]:
    return [list(map(float, xy))]


def image(image_id: int, split: str) -> dict:
    return {"id": image_id, "file_name": f"COCO_{split}_{image_id:012d}.jpg", "height": H, "width": W}


def annotation(ann_id: int, image_id: int, category_id: int, segmentation, area: float, crowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": area,
        "iscrowd": crowd,
        "bbox": [0, 0, 1, 1],
    }


def train_json() -> dict:
    """Images 30, 9, 25 in that JSON order; 25 has no annotation, 30 only a crowd one."""
    anns = [
        # Image 9: a large person polygon, a stop sign (compressed RLE) inside it and a toothbrush of the same
        # area overlapping both (the tie keeps annotation order), and a crowd toothbrush (uncompressed RLE).
        annotation(1, 9, PERSON, polygon(2, 2, 22, 2, 22, 18, 2, 18), 320.0),
        annotation(2, 9, STOP_SIGN, compressed_rle(box(6, 12, 8, 14)), 36.0),
        annotation(3, 9, TOOTHBRUSH, compressed_rle(box(10, 16, 12, 18)), 36.0),
        annotation(4, 9, TOOTHBRUSH, uncompressed_rle(box(0, 8, 18, 30)), 96.0, crowd=1),
        # Image 9 again, after another image's annotation: a 2x2 person (y 7..8, x 15..16) right of the stop
        # sign (y 6..11, x 8..13), so that their void rings meet, and a two-part stop-sign polygon.
        annotation(6, 9, PERSON, compressed_rle(box(7, 9, 15, 17)), 4.0),
        annotation(7, 9, STOP_SIGN, [[24, 18, 30, 18, 30, 23, 24, 23], [1, 20, 5, 20, 5, 23, 1, 23]], 50.0),
        annotation(5, 30, PERSON, uncompressed_rle(box(4, 20, 4, 28)), 256.0, crowd=1),
    ]
    anns.insert(4, anns.pop())  # image 30's annotation between two of image 9's
    images = [image(30, "train2014"), image(9, "train2014"), image(25, "train2014")]
    return {"images": images, "annotations": anns, "categories": categories()}


def val_json() -> dict:
    anns = [
        annotation(11, 73, TOOTHBRUSH, polygon(0, 0, 31, 0, 31, 23, 0, 23), 736.0),
        annotation(12, 73, PERSON, compressed_rle(box(20, 24, 0, 32)), 128.0),
        annotation(13, 42, STOP_SIGN, polygon(3, 3, 9, 3, 9, 9), 18.0),
    ]
    return {"images": [image(42, "val2014"), image(73, "val2014")], "annotations": anns, "categories": categories()}


def categories() -> list[dict]:
    return [{"id": cid, "name": name} for cid, name in ((1, "person"), (13, "stop sign"), (90, "toothbrush"))]


TRAIN_IDS = ["COCO_train2014_000000000009", "COCO_train2014_000000000030"]  # image-id order, 25 not annotated
VAL_IDS = ["COCO_val2014_000000000042", "COCO_val2014_000000000073"]


def write_tree(root, train=None, val=None) -> None:
    (root / "annotations").mkdir(parents=True)
    for split, dataset in (("train2014", train or train_json()), ("val2014", val or val_json())):
        (root / split).mkdir()
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))


@pytest.fixture(autouse=True)
def shipped_lists(tmp_path, monkeypatch):
    """Point the shipped lists at small copies equal to what the tree gives (the real ones have 82,081 ids)."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name, ids in (("train", TRAIN_IDS), ("val", VAL_IDS)):
        (shipped / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    monkeypatch.setattr(prepare, "TRAIN_LIST", shipped / "train.txt")
    monkeypatch.setattr(prepare, "VAL_LIST", shipped / "val.txt")
    return shipped


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "COCO2014"
    write_tree(root)
    return root


def run(root, *extra, list_dir=None):
    list_dir = list_dir or root.parent / "lists"
    argv = ["--coco_root", str(root), "--list_dir", str(list_dir), "--num_workers", "0", *map(str, extra)]
    with restored_root_logger():
        return prepare.main(prepare.get_args_parser().parse_args(argv))


# --------------------------------------------------------------------------- the expected masks, from pycocotools


def reference_coco(root, split: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(root / "annotations" / f"instances_{split}.json"))


def dilate(mask: np.ndarray, n: int) -> np.ndarray:
    """OR of the mask shifted by every offset in [-n, n]^2 (pixels outside the image count as empty)."""
    padded = np.pad(mask, n)
    out = np.zeros(mask.shape, bool)
    for dy in range(2 * n + 1):
        for dx in range(2 * n + 1):
            out |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


def expected_mask(coco: COCO, image_id: int, recipe: str, void_border: int = 0) -> np.ndarray:
    anns = [ann for ann in coco.dataset["annotations"] if ann["image_id"] == image_id]  # JSON order
    label = np.zeros((H, W), np.uint8)
    if recipe == "recam":  # non-crowd, later instances overwrite earlier ones
        for ann in anns:
            if not ann["iscrowd"]:
                label[coco.annToMask(ann) == 1] = INDEX[ann["category_id"]]
        return label
    order = sorted(range(len(anns)), key=lambda i: (anns[i]["area"], i))  # ascending area, ties in JSON order
    for ann in (anns[i] for i in order):
        mask = coco.annToMask(ann) == 1
        label[mask & (label == 0)] = INDEX[ann["category_id"]]  # the first writer keeps the pixel
        if void_border:
            label[dilate(mask, void_border) & ~mask] = 255
    return label


def written_masks(root) -> dict[str, np.ndarray]:
    return {p.stem: load_label_png(p) for p in sorted((root / "SegmentationClass").glob("*/*.png"))}


def check_all_masks(root, recipe: str, void_border: int = 0) -> dict[str, np.ndarray]:
    masks = written_masks(root)
    every_image = TRAIN_IDS + ["COCO_train2014_000000000025"] + VAL_IDS
    assert sorted(masks) == sorted(every_image)  # also the image without annotations
    for split in ("train2014", "val2014"):
        coco = reference_coco(root, split)
        for image_id, info in coco.imgs.items():
            stem = info["file_name"][:-4]
            assert (root / "SegmentationClass" / split / f"{stem}.png").is_file()
            np.testing.assert_array_equal(masks[stem], expected_mask(coco, image_id, recipe, void_border), stem)
    assert not list(root.glob("SegmentationClass/*/.*"))  # no temporary files left
    return masks


# --------------------------------------------------------------------------- masks


def test_recam_masks_match_pycocotools(tree):
    summary = run(tree)
    masks = check_all_masks(tree, "recam")
    assert summary["train2014"] == {"images": 3, "listed": 2, "written": 3, "skipped": 0}
    mask_9 = masks["COCO_train2014_000000000009"]
    # Hand-checked pixels: the toothbrush (annotation 3) overwrote the stop sign (2), which overwrote the person.
    assert mask_9[11, 13] == 80 and mask_9[7, 9] == 12 and mask_9[3, 3] == 1
    assert mask_9[1, 25] == 0  # crowd toothbrush: background under this recipe
    assert not masks["COCO_train2014_000000000030"].any()  # only a crowd annotation
    assert not masks["COCO_train2014_000000000025"].any()  # no annotation
    assert all(255 not in m for m in masks.values())
    with Image.open(tree / "SegmentationClass" / "val2014" / "COCO_val2014_000000000073.png") as img:
        assert img.mode == "P" and img.size == (W, H)
        np.testing.assert_array_equal(np.array(img.getpalette()).reshape(-1, 3)[:81], color_map()[:81])


@pytest.mark.parametrize("void_border", [0, 1, 2])
def test_coco2voc_masks_match_pycocotools(tree, void_border):
    extra = ["--recipe", "coco2voc"] + (["--void_border", void_border] if void_border else [])
    run(tree, *extra)
    masks = check_all_masks(tree, "coco2voc", void_border)
    mask_9 = masks["COCO_train2014_000000000009"]
    if void_border == 0:
        # Smallest first: (11, 13) is in the stop sign and the toothbrush, of equal areas, and the stop sign,
        # first in annotation order, keeps it; both are written before the person; the crowd toothbrush counts.
        assert mask_9[11, 13] == 12 and mask_9[3, 3] == 1 and mask_9[1, 25] == 80
        assert 255 not in mask_9
        assert (masks["COCO_train2014_000000000030"] == 1).sum() == 16 * 24
    elif void_border == 1:
        # The person (area 4) goes first with its ring at x 14; the stop sign keeps x 13, its ring misses x 15.
        assert mask_9[7, 15] == 1 and mask_9[7, 14] == 255 and mask_9[7, 13] == 12
    else:
        # The person's 2-px ring (x 13..14) was written before the stop sign, which does not write over it; the
        # stop sign's ring (x 14..15) then overwrites the person's pixels at x 15.
        assert mask_9[7, 13] == 255 and mask_9[7, 15] == 255


def test_void_ring_by_hand():
    mask = np.zeros((5, 6), bool)
    mask[2, 2] = True
    mask[0, 5] = True  # in a corner: the ring is cut by the image border
    ring = prepare.void_ring(mask, 1)
    expected = np.array(
        [
            [0, 0, 0, 0, 1, 0],
            [0, 1, 1, 1, 1, 1],
            [0, 1, 0, 1, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(ring, expected)
    assert not prepare.void_ring(np.zeros((3, 3), bool), 2).any()


def test_parallel_workers_write_the_same_masks(tree, monkeypatch):
    run(tree, "--recipe", "coco2voc", "--void_border", 1)
    serial = written_masks(tree)
    monkeypatch.setattr(prepare, "CHUNK_SIZE", 1)  # one image per task, so that both workers get some
    summary = run(tree, "--recipe", "coco2voc", "--void_border", 1, "--overwrite", "--num_workers", 2)
    assert summary["train2014"]["written"] == 3 and summary["val2014"]["written"] == 2
    parallel = written_masks(tree)
    assert parallel.keys() == serial.keys()
    for stem in serial:
        np.testing.assert_array_equal(parallel[stem], serial[stem], stem)


def test_existing_masks_are_skipped_and_overwrite_rewrites(tree):
    run(tree)
    out = tree / "SegmentationClass" / "train2014"
    kept = out / "COCO_train2014_000000000009.png"
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(kept)  # stands for an older run's mask
    (out / "COCO_train2014_000000000030.png").unlink()  # as if killed before this one...
    (out / ".COCO_train2014_000000000030.k1ll3d.tmp.png").write_bytes(b"half")  # ...while writing it
    summary = run(tree)
    assert summary["train2014"] == {"images": 3, "listed": 2, "written": 1, "skipped": 2}
    assert summary["val2014"]["written"] == 0 and summary["val2014"]["skipped"] == 2
    assert (load_label_png(kept) == 7).all()
    assert (out / "COCO_train2014_000000000030.png").is_file() and not list(out.glob(".*"))
    summary = run(tree, "--overwrite")
    assert summary["train2014"]["written"] == 3 and summary["train2014"]["skipped"] == 0
    check_all_masks(tree, "recam")


# --------------------------------------------------------------------------- lists and labels


def test_lists_in_image_id_order_without_unannotated_images(tree):
    run(tree)
    lists = tree.parent / "lists"
    assert load_img_id_list(lists / "train.txt") == TRAIN_IDS  # JSON order was 30, 9, 25
    assert load_img_id_list(lists / "val.txt") == VAL_IDS
    assert sorted(p.name for p in lists.iterdir()) == ["cls_labels.npz", "train.txt", "val.txt"]  # no temp files


def test_labels_count_every_annotation_crowd_included(tree):
    run(tree)
    labels = load_cls_labels(tree.parent / "lists" / "cls_labels.npz", num_classes=80)
    assert sorted(labels) == sorted(TRAIN_IDS + VAL_IDS)
    assert all(v.dtype == np.float32 and v.shape == (80,) for v in labels.values())

    def present(image_id: str) -> list[int]:
        return np.flatnonzero(labels[image_id]).tolist()  # 0-based: person 0, stop sign 11, toothbrush 79

    assert present("COCO_train2014_000000000009") == [0, 11, 79]
    assert present("COCO_train2014_000000000030") == [0]  # its only annotation is a crowd one
    assert present("COCO_val2014_000000000042") == [11]
    assert present("COCO_val2014_000000000073") == [0, 79]
    assert set(np.concatenate(list(labels.values())).tolist()) == {0.0, 1.0}
    with np.load(tree.parent / "lists" / "cls_labels.npz", allow_pickle=False) as data:
        assert "voc12_root" not in data.files


def test_a_difference_from_the_shipped_lists_is_a_warning(tree, shipped_lists, caplog):
    with caplog.at_level(logging.WARNING, logger="coco14.prepare"):
        run(tree)
    assert not caplog.records  # the fixture's shipped lists equal the tree's
    # The shipped train list has image 25 (unannotated here) and lacks 30: one id only in each.
    (shipped_lists / "train.txt").write_text("COCO_train2014_000000000009\nCOCO_train2014_000000000025\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="coco14.prepare"):
        run(tree)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "train.txt" in record.message and str(shipped_lists / "train.txt") in record.message
    assert "1 ids only in ours, 1 only in the shipped list" in record.message


def test_a_different_existing_list_needs_overwrite(tree):
    lists = tree.parent / "lists"
    lists.mkdir()
    (lists / "val.txt").write_text("COCO_val2014_000000000073\n")
    with pytest.raises(FileExistsError, match=r"val\.txt exists with different ids; pass --overwrite"):
        run(tree)
    assert not (tree / "SegmentationClass").exists()  # refused before any mask
    run(tree, "--overwrite")
    assert load_img_id_list(lists / "val.txt") == VAL_IDS


# --------------------------------------------------------------------------- bad input


def break_json(name: str, text: str):
    def apply(root):
        (root / "annotations" / name).write_text(text)

    return apply


def edit_json(name: str, edit):
    def apply(root):
        path = root / "annotations" / name
        dataset = json.loads(path.read_text())
        edit(dataset)
        path.write_text(json.dumps(dataset))

    return apply


def set_category(dataset: dict, ann_id: int, category_id: int) -> None:
    next(a for a in dataset["annotations"] if a["id"] == ann_id)["category_id"] = category_id


VAL = "instances_val2014.json"
TRAIN = "instances_train2014.json"
VAL_TEXT = json.dumps(val_json())
TRUNCATED = VAL_TEXT[: VAL_TEXT.index("[", VAL_TEXT.index('"annotations"')) + 1]  # ends with '"annotations": ['

BAD_INPUTS = {
    "missing root": (lambda root: shutil.rmtree(root), r"--coco_root .*COCO2014: not a folder"),
    "missing json": (lambda root: (root / "annotations" / VAL).unlink(), rf"{VAL}: not found"),
    "truncated json": (
        break_json(VAL, TRUNCATED),
        rf"{VAL}: not valid JSON \(truncated.*: Expecting value: line 1 column {len(TRUNCATED) + 1} ",
    ),
    "not json": (break_json(TRAIN, "<html>"), rf"{TRAIN}: not valid JSON .*Expecting value: line 1 column 1 "),
    "no categories": (edit_json(VAL, lambda d: d.pop("categories")), rf"{VAL}: no 'categories' list"),
    "no images": (edit_json(TRAIN, lambda d: d.pop("images")), rf"{TRAIN}: no 'images' list"),
    "no annotations": (edit_json(VAL, lambda d: d.pop("annotations")), rf"{VAL}: no 'annotations' list"),
    "category in a gap": (
        edit_json(VAL, lambda d: set_category(d, 12, 12)),  # COCO has no category 12
        rf"{VAL}: annotation 12: category id 12 is not one of the 80 COCO-2014 categories",
    ),
    "category past 90": (
        edit_json(TRAIN, lambda d: set_category(d, 4, 91)),
        rf"{TRAIN}: annotation 4: category id 91 is not",
    ),
    "unknown image": (
        edit_json(VAL, lambda d: d["annotations"][0].update(image_id=5)),
        rf"{VAL}: annotation 11: image id 5 is not in 'images'",
    ),
    "rle of another size": (
        edit_json(TRAIN, lambda d: d["annotations"][1]["segmentation"].update(size=[10, 10])),
        rf"{TRAIN}: annotation 2: RLE size \[10, 10\] is not \[height, width\] = \[24, 32\]",
    ),
    "empty polygon": (
        edit_json(VAL, lambda d: d["annotations"][2].update(segmentation=[[3, 3, 9, 3, 9, 9], []])),
        rf"{VAL}: annotation 13: 'segmentation' is neither polygons",
    ),
    "image of the other split": (
        edit_json(VAL, lambda d: d["images"][0].update(file_name="COCO_train2014_000000000042.jpg")),
        rf"{VAL}: image 42: file_name 'COCO_train2014_000000000042.jpg' is a train2014 image, not val2014",
    ),
}


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_the_file_and_writes_nothing(tree, case):
    damage, message = BAD_INPUTS[case]
    damage(tree)
    before = files_under(tree.parent)
    with pytest.raises(cli.InputError, match=message):
        run(tree)
    assert files_under(tree.parent) == before  # no mask, list, label file or folder


@pytest.mark.parametrize("workers", [0, 2])
def test_an_undecodable_polygon_names_the_annotation(tree, monkeypatch, workers):
    """Coordinates that are not numbers are only found by pycocotools, in a worker when there are workers."""
    edit_json(TRAIN, lambda d: d["annotations"][5].update(segmentation=[["x"] * 6]))(tree)
    monkeypatch.setattr(prepare, "CHUNK_SIZE", 1)
    with pytest.raises(cli.InputError, match=rf"{TRAIN}: annotation 6: cannot decode its segmentation: .*float"):
        run(tree, "--num_workers", workers)
    assert not list(tree.glob("SegmentationClass/*/.*"))


def test_voc_devkit_is_recognised(tmp_path):
    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    with pytest.raises(cli.InputError, match=r"VOC2012: it looks like a VOC devkit"):
        run(voc)
    assert files_under(voc) == ["JPEGImages", "SegmentationClass"]


def test_void_border_needs_coco2voc(tree):
    with pytest.raises(cli.InputError, match="--void_border applies to --recipe coco2voc only"):
        run(tree, "--void_border", 2)
    assert not (tree / "SegmentationClass").exists()


def test_cli_reports_one_line_and_exit_code_1(tree, capsys):
    break_json(VAL, TRUNCATED)(tree)
    argv = ["--coco_root", str(tree), "--list_dir", str(tree.parent / "lists"), "--num_workers", "0"]
    with restored_root_logger(), pytest.raises(SystemExit) as exit_info:
        cli.run(prepare.main, prepare.get_args_parser(), argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and VAL in err[0] and "not valid JSON" in err[0]
