"""Datasets as a parameter (docs/datasets.md): the descriptor contract, the registry, COCO-2014, a folder of images."""

from __future__ import annotations

import json
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
from coco14.dataset import COCO14, split_of
from engine import datasets, inference
from folder.dataset import FolderDataset, read_classes, read_labels
from folder.make_toy_folder import make_toy_folder
from network import resnet38_cls_ser
from tests.helpers import quick_train_flags, restored_root_logger
from tool import cli
from tool.cli import InputError
from tool.dataset import DatasetInfo, color_map, load_img_id_list
from tool.fileio import load_label_png, load_scores, save_png
from voc12.data import VOC12ImageDataset
from voc12.make_toy_voc import make_toy_voc

WIDTH = "0.125"
COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 60, 220)}  # disc, bar, cross


# =============================================================================== a dataset no other file knows


class Shapes3(DatasetInfo):
    """A made-up 3-class dataset in a layout of its own: pictures/<id>.png, truth/<id>.png, labels.json."""

    name = "shapes3"
    class_names = ("disc", "bar", "cross")

    def image_path(self, image_id: str) -> Path:
        return self.root / "pictures" / f"{image_id}.png"

    def mask_path(self, image_id: str) -> Path:
        return self.root / "truth" / f"{image_id}.png"

    def load_labels(self, ids, cls_labels):
        table = json.loads((self.root / "labels.json").read_text())
        vectors = {i: np.isin(np.arange(3), table[i]).astype(np.float32) for i in table}
        return {i: vectors[i] for i in ids}

    @classmethod
    def flag_defaults(cls, script, root):
        lists = {"train_list", "infer_list", "list"}
        return {**super().flag_defaults(script, root), **{flag: Path(root) / "all.txt" for flag in lists}}


def shapes_image(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with one to three of the three shapes on a grey background, and its mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for cls in rng.choice([1, 2, 3], size=int(rng.integers(1, 4)), replace=False):
        cy, cx = rng.integers(14, size - 14, size=2)
        if cls == 1:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 < 100
        elif cls == 2:
            region = (abs(yy - cy) < 4) & (abs(xx - cx) < 12)
        else:
            region = ((abs(yy - cy) < 3) & (abs(xx - cx) < 10)) | ((abs(xx - cx) < 3) & (abs(yy - cy) < 10))
        mask[region] = cls
    rgb = np.full((size, size, 3), 128, np.uint8)
    for cls, colour in COLOURS.items():
        rgb[mask == cls] = colour
    return rgb, mask


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes3")
    (root / "pictures").mkdir()
    rng = np.random.default_rng(0)
    labels = {}
    for k in range(8):
        image_id = f"pic{k}"
        rgb, mask = shapes_image(rng)
        Image.fromarray(rgb).save(root / "pictures" / f"{image_id}.png")
        save_png(root / "truth" / f"{image_id}.png", mask, color_map())
        labels[image_id] = sorted(int(c) - 1 for c in np.unique(mask) if c)
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "all.txt").write_text("".join(f"{i}\n" for i in labels))
    return root


def run_every_stage(dataset: str, root: Path, out: Path, list_path: Path, network: str | None = None) -> dict:
    """Train and run every stage of the method on ``dataset`` in ``root`` (1/8 width, from scratch, one epoch each;
    with ``network``, the backbone module every stage builds its head on); returns the evaluation of the
    segmentation network's predictions."""
    data = ["--dataset", dataset, "--dataset_root", str(root), "--device", "cpu", "--width_mult", WIDTH]
    data += ["--network", network] if network else []
    train = [*data, *quick_train_flags(), "--from_scratch", "--train_list", str(list_path)]
    infer = [*data, "--infer_list", str(list_path), "--num_workers", "0"]
    scripts = (
        (
            train_cls_ser,
            [
                *train,
                "--session_name",
                str(out / "cls"),
                "--val_list",
                "",
                "--crop_size",
                "64",
                "--resize_long",
                "64",
                "80",
            ],
        ),
        (
            infer_cls_ser,
            [*infer, "--weights", str(out / "cls.pth"), "--out_cam", str(out / "cam"), "--scales", "1.0"]
            + ["--out_cam_pred", str(out / "cam_pred"), "--out_crf", str(out / "crf"), "--crf_workers", "0"],
        ),
        (
            train_aff,
            [*train, "--session_name", str(out / "aff"), "--crop_size", "72"]
            + ["--la_crf_dir", str(out / "crf_4.0"), "--ha_crf_dir", str(out / "crf_24.0")],
        ),
        (
            infer_aff,
            [*infer, "--weights", str(out / "aff.pth"), "--cam_dir", str(out / "cam"), "--out_rw", str(out / "rw")],
        ),
        (train_seg, [*train, "--session_name", str(out / "seg"), "--label_dir", str(out / "rw"), "--crop_size", "64"]),
        (infer_seg, [*infer, "--weights", str(out / "seg.pth"), "--out_seg", str(out / "seg_out"), "--scales", "1.0"]),
    )
    with restored_root_logger():
        for script, argv in scripts:
            if argv is not None:
                script.main(script.get_args_parser().parse_args(argv))
        eval_argv = [*data[:4], "--list", str(list_path), "--predict_dir", str(out / "seg_out"), "--logfile", ""]
        return evaluation.main(evaluation.get_args_parser().parse_args([*eval_argv, "--num_workers", "0"]))


def test_a_new_dataset_is_one_class_and_one_registry_entry(shapes_root, tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.DATASETS, "shapes3", Shapes3)
    result = run_every_stage("shapes3", shapes_root, tmp_path, shapes_root / "all.txt")
    assert list(result["IoU"]) == ["background", "disc", "bar", "cross"] and result["dataset"] == "shapes3"
    assert torch.load(tmp_path / "cls.pth", weights_only=True)["fc8.weight"].shape[0] == 3  # the class count flowed
    assert torch.load(tmp_path / "seg.pth", weights_only=True)["fc8_seg_conv2.weight"].shape[0] == 4
    for image_id in load_img_id_list(shapes_root / "all.txt"):
        keys, cams = load_scores(tmp_path / "cam" / f"{image_id}.npz", kind="cam", num_fg_classes=3)
        wanted = json.loads((shapes_root / "labels.json").read_text())[image_id]
        assert keys.tolist() == wanted and cams.shape[1:] == (64, 64)
        for folder in ("cam_pred", "rw", "seg_out"):
            assert set(np.unique(load_label_png(tmp_path / folder / f"{image_id}.png"))) <= {0, 1, 2, 3}
    # The list default of the dataset applies where no flag is given.
    args = train_cls_ser.get_args_parser().parse_args(["--dataset", "shapes3", "--dataset_root", str(shapes_root)])
    assert args.train_list == shapes_root / "all.txt"


# =============================================================================== a folder of your own images


def write_folder(root: Path, classes: list[str], labels: list[str], masks: dict[str, np.ndarray]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (root / "labels.txt").write_text("".join(f"{line}\n" for line in labels))
    for image_id, mask in masks.items():
        rgb = np.where(mask[..., None] > 0, np.array([200, 60, 40], np.uint8), np.uint8(120))
        Image.fromarray(rgb.astype(np.uint8)).save(root / "images" / f"{image_id}.png")
        save_png(root / "masks" / f"{image_id}.png", mask, color_map())
    return root


def test_one_class_folder_runs_end_to_end(tmp_path):
    # Object vs background: five images with a disc (some with two), one without any object.
    rng = np.random.default_rng(1)
    masks, labels = {}, []
    for k in range(6):
        mask = np.zeros((64, 64), np.uint8)
        yy, xx = np.mgrid[:64, :64]
        for _ in range(int(k > 0) + int(k > 3)):
            cy, cx = rng.integers(16, 48, size=2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 120] = 1
        masks[f"photo{k}"] = mask
        labels.append(f"photo{k}" + (" object" if mask.any() else ""))
    root = write_folder(tmp_path / "data", ["object"], labels, masks)
    (root / "train.txt").write_text("".join(f"{i}\n" for i in masks))
    result = run_every_stage("folder", root, tmp_path / "out", root / "train.txt")
    assert list(result["IoU"]) == ["background", "object"] and result["present_classes"] == ["background", "object"]


def test_toy_folder_descriptor(tmp_path):
    summary = make_toy_folder(tmp_path / "toy", num_train=12, num_val=4, size=64, seed=0)
    info = datasets.get_dataset("folder", tmp_path / "toy")
    assert info.class_names == tuple(summary["classes"]) and info.num_classes == 6
    ids = load_img_id_list(tmp_path / "toy" / "train.txt")
    labels = info.load_labels(ids, None)
    for image_id in ids:  # labels.txt (names or 1-based indices) agrees with the masks
        present = {int(c) for c in np.unique(load_label_png(info.mask_path(image_id))) if c not in (0, 255)}
        assert set((np.flatnonzero(labels[image_id]) + 1).tolist()) == present
    modes = set()
    for image_id, image in VOC12ImageDataset(tmp_path / "toy" / "train.txt", info):
        assert image.dtype == torch.uint8 and image.shape[2] == 3  # grey, palette and RGBA read as RGB
        modes.add(Image.open(info.image_path(image_id)).mode)
    assert {"L", "P", "RGBA", "RGB"} <= modes | set(summary["modes"])
    defaults = infer_seg.get_args_parser().parse_args(
        ["--dataset", "folder", "--dataset_root", str(tmp_path / "toy"), "--weights", "w"]
    )
    assert defaults.infer_list == tmp_path / "toy" / "val.txt"


def test_folder_class_and_label_files(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\n\ndog\nbird\n")
    assert read_classes(tmp_path / "classes.txt") == ("cat", "dog", "bird")
    (tmp_path / "labels.txt").write_text("a cat bird\nb 2\nc\nd 1 dog\n")
    labels = read_labels(tmp_path / "labels.txt", ("cat", "dog", "bird"))
    assert {k: v.tolist() for k, v in labels.items()} == {
        "a": [1, 0, 1],
        "b": [0, 1, 0],
        "c": [0, 0, 0],  # an image without a foreground class
        "d": [1, 1, 0],
    }


@pytest.mark.parametrize(
    ("classes", "labels", "message"),
    [
        ("cat\ndog\n", "a cat\nb horse\n", r"labels\.txt:2: class 'horse' is not in classes\.txt"),
        ("cat\ndog\n", "a cat\nb 3\n", r"labels\.txt:2: class '3' is not in classes\.txt .*1\.\.2"),
        ("cat\ndog\n", "a cat\nb dog\na dog\n", r"labels\.txt:3: id 'a' is listed twice \(first on line 1\)"),
        ("cat\ncat\n", "a cat\n", r"classes\.txt:2: class 'cat' is listed twice"),
        ("traffic light\n", "a 1\n", r"classes\.txt:1: .*may not contain spaces"),
        ("\n", "a\n", r"classes\.txt: no class names"),
    ],
)
def test_folder_bad_files_name_file_and_line(tmp_path, classes, labels, message):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.txt").write_text(classes)
    (tmp_path / "labels.txt").write_text(labels)
    with pytest.raises(InputError, match=message):
        FolderDataset(tmp_path).load_labels(["a"], None)


def test_folder_duplicate_image_id_and_missing_image(tmp_path):
    root = write_folder(tmp_path, ["cat"], ["a cat", "b cat"], {"a": np.ones((8, 8), np.uint8)})
    (root / "list.txt").write_text("a\nb\n")
    with pytest.raises(FileNotFoundError, match=r"1 JPEG image file\(s\) missing .*first: id b -> .*images/b\.jpg"):
        VOC12ImageDataset(root / "list.txt", FolderDataset(root))
    Image.new("RGB", (8, 8)).save(root / "images" / "a.jpg")
    with pytest.raises(InputError, match=r"a\.png: id 'a' has two images \(a\.jpg too\)"):
        FolderDataset(root).image_path("a")


def test_mask_value_beyond_the_classes_is_refused(tmp_path):
    mask = np.ones((8, 8), np.uint8)
    mask[0, 0] = 7  # five classes: 0..5 and 255 only
    root = write_folder(tmp_path, ["a", "b", "c", "d", "e"], ["x a"], {"x": mask})
    (root / "list.txt").write_text("x\n")
    save_png(root / "pred" / "x.png", np.ones((8, 8), np.uint8))
    argv = ["--dataset", "folder", "--dataset_root", str(root), "--list", str(root / "list.txt")]
    argv += ["--predict_dir", str(root / "pred"), "--logfile", "", "--num_workers", "0"]
    with pytest.raises(evaluation.EvaluationError, match=r"masks/x\.png.*outside 0\.\.5 and 255: \[7\]"):
        evaluation.main(evaluation.get_args_parser().parse_args(argv))


# =============================================================================== COCO-2014


def test_coco_ids_are_file_stems():
    assert split_of("COCO_train2014_000000000009") == "train2014"
    info = COCO14("/data/coco")
    assert info.image_path("COCO_val2014_000000000042") == Path("/data/coco/val2014/COCO_val2014_000000000042.jpg")
    assert info.mask_path("COCO_train2014_000000000009") == Path(
        "/data/coco/SegmentationClass/train2014/COCO_train2014_000000000009.png"
    )
    assert info.num_fg_classes == 80 and info.num_classes == 81
    with pytest.raises(InputError, match=r"'2007_000032' is not a COCO-2014 id"):
        info.image_path("2007_000032")


def test_coco_defaults_follow_the_dataset_and_explicit_flags_win(tmp_path):
    parse = train_cls_ser.get_args_parser().parse_args
    voc = parse([])
    assert (voc.dataset, voc.dataset_root, voc.train_list) == ("voc12", "VOC2012", "voc12/train_aug.txt")
    coco = parse(["--dataset", "coco14"])
    assert (
        coco.dataset_root == "COCO2014" and coco.train_list.name == "train.txt" and coco.val_list.name == "val_part.txt"
    )
    assert coco.cls_labels.name == "cls_labels.npz" and coco.cls_labels.parent.name == "coco14"
    mine = parse(["--train_list", "mine.txt", "--dataset", "coco14", "--voc12_root", "/c"])
    assert mine.train_list == "mine.txt" and mine.dataset_root == "/c"
    assert infer_cls_ser.get_args_parser().parse_args(["--dataset", "coco14", "--weights", "w"]).bg_score == 0.14
    assert infer_cls_ser.get_args_parser().parse_args(["--weights", "w"]).bg_score == 0.2


def test_coco_on_a_voc_devkit_and_unknown_datasets_are_refused(tmp_path, capsys):
    make_toy_voc(tmp_path / "voc", num_train=2, num_val=1, size=48)
    with pytest.raises(InputError, match=r"no train2014/ or val2014/ folder, not COCO-2014 \(it looks like a VOC"):
        datasets.get_dataset("coco14", tmp_path / "voc")
    argv = ["--dataset", "imagenet", "--weights", "w", "--out_cam", str(tmp_path / "cam")]
    with pytest.raises(SystemExit) as stop:
        cli.run(infer_cls_ser.main, infer_cls_ser.get_args_parser(), argv)
    assert stop.value.code == 1 and "argument --dataset: invalid choice: 'imagenet'" in capsys.readouterr().err
    assert not (tmp_path / "cam").exists()


def test_coco_labels_missing_says_how_to_make_them(tmp_path):
    with pytest.raises(InputError, match=r"nope\.npz: not found; python -m coco14\.prepare --coco_root"):
        COCO14(tmp_path).load_labels(["COCO_train2014_000000000009"], tmp_path / "nope.npz")


def test_a_checkpoint_of_another_class_count_is_refused(tmp_path):
    path = tmp_path / "voc.pth"
    torch.save(resnet38_cls_ser.Net(width_mult=0.125).state_dict(), path)  # 20 VOC classes
    with pytest.raises(InputError, match=r"voc\.pth: its head \(fc8\.weight\) has 20 classes, this network 80"):
        inference.load_model("network.resnet38_cls_ser", 0.125, str(path), torch.device("cpu"), num_classes=80)


# =============================================================================== images without labels


def test_predicted_labels_give_the_cams_of_those_labels():
    torch.manual_seed(0)
    model = resnet38_cls_ser.Net(width_mult=0.125).eval()
    inputs = [torch.randn(2, 3, 40, 48), torch.randn(2, 3, 20, 24)]
    for threshold in (0.3, 0.5, 0.7):
        label, cams, probs = infer_cls_ser.predict_and_infer_cams(
            model, inputs, (40, 48), torch.device("cpu"), threshold
        )
        assert label.tolist() == (probs > threshold).astype(np.float32).tolist()
        given = infer_cls_ser.infer_cams(model, inputs, label, (40, 48), torch.device("cpu"))
        # The given-label path resizes only the present classes, this one all of them: the bilinear resize's
        # vectorised loop then rounds differently, measured up to 1.8e-7 (float32 ulps of values in [0, 1]).
        np.testing.assert_allclose(cams, given, rtol=0, atol=1e-6)
    # The score is the sigmoid of the spatial mean of the CAM, averaged over the scales and the flips.
    with torch.no_grad():
        want = torch.sigmoid(torch.cat([model(x).mean(dim=(2, 3)) for x in inputs]).mean(0)).numpy()
    np.testing.assert_allclose(probs, want, rtol=1e-6)


def test_infer_cls_ser_without_labels_logs_its_predictions(tmp_path, capsys):
    make_toy_folder(tmp_path / "toy", num_train=3, num_val=1, size=48, seed=0)
    (tmp_path / "toy" / "labels.txt").unlink()  # no labels at all
    weights = tmp_path / "w.pth"
    torch.save(resnet38_cls_ser.Net(width_mult=0.125, num_classes=5).state_dict(), weights)
    argv = ["--dataset", "folder", "--dataset_root", str(tmp_path / "toy"), "--weights", str(weights)]
    argv += ["--width_mult", WIDTH, "--label_source", "predicted", "--cls_threshold", "0.3", "--device", "cpu"]
    argv += ["--out_cam", str(tmp_path / "cam"), "--scales", "1.0", "--num_workers", "0", "--crf_workers", "0"]
    with restored_root_logger():
        infer_cls_ser.main(infer_cls_ser.get_args_parser().parse_args(argv))
    ids = load_img_id_list(tmp_path / "toy" / "train.txt")
    logged = [line for line in capsys.readouterr().out.splitlines() if "predicted classes" in line]
    assert len(logged) == len(ids) and all(any(f" {i}: predicted" in m for m in logged) for i in ids)
    for image_id in ids:
        keys, _ = load_scores(tmp_path / "cam" / f"{image_id}.npz", kind="cam", num_fg_classes=5)
        assert keys.max(initial=0) < 5
