"""The four stage scripts with ``--network network.vgg16_cls_ser`` / ``network.vgg16_aff`` (docs/method.md#vgg16).

A 2-step run of each at width 1/8 on toy data, initialised from a .caffemodel
written byte by byte (tests/caffe_wire.py), and a check that every script feeds
the network its own normalisation (Caffe BGR means), not ImageNet's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import infer_aff
import infer_cls_ser
import train_aff
import train_cls_ser
from network import vgg16_aff, vgg16_cls_ser, vgg16d
from tests.caffe_wire import caffemodel_of
from tests.helpers import restored_root_logger
from tool.dataset import load_img_id_list
from tool.fileio import load_label_png, load_scores
from voc12.make_toy_voc import make_toy_voc

WIDTH = "0.125"


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Every test here runs with one torch thread (fixture in conftest.py)."""


@pytest.fixture
def keep_logging():
    """The scripts configure the root logger; put it back afterwards."""
    with restored_root_logger():
        yield


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("vgg16")
    root = base / "VOC2012"
    make_toy_voc(root, num_train=4, num_val=1, size=64, seed=5)
    torch.manual_seed(0)
    backbone = vgg16d.Net(width_mult=float(WIDTH)).state_dict()
    caffemodel = base / "vgg16_20M.caffemodel"
    caffemodel.write_bytes(caffemodel_of(backbone))
    lists = root / "ImageSets" / "Segmentation"
    return {"base": base, "root": root, "train": lists / "train.txt", "val": lists / "val.txt", "caffe": caffemodel}


@pytest.fixture
def normalize_calls(monkeypatch):
    """Count the calls of the VGG16 normalisation through ``Net.normalize`` (the only way the scripts get it)."""
    calls = []

    def spy(img):
        calls.append(img.shape)
        return vgg16d.normalize(img)

    for net in (vgg16_cls_ser.Net, vgg16_aff.Net):
        monkeypatch.setattr(net, "normalize", staticmethod(spy))
    return calls


def test_vgg16_pipeline_two_steps_each(toy, normalize_calls, keep_logging):
    base = toy["base"]
    common = ["--voc12_root", str(toy["root"]), "--width_mult", WIDTH, "--num_workers", "0", "--device", "cpu"]
    train_common = ["--batch_size", "2", "--max_epoches", "1", "--tblog_dir", "", *common]

    # 1. SSENet on VGG16 from the .caffemodel: 4 images / batch 2 = 2 steps.
    cls_args = train_cls_ser.get_args_parser().parse_args(
        [
            "--network",
            "network.vgg16_cls_ser",
            "--weights",
            str(toy["caffe"]),
            "--train_list",
            str(toy["train"]),
            "--val_list",
            str(toy["val"]),
            "--cls_labels",
            str(base / "labels.npz"),
            "--session_name",
            str(base / "vgg16_cls_ser"),
            "--crop_size",
            "48",
            "--resize_long",
            "48",
            "64",
            "--val_crop_size",
            "48",
            *train_common,
        ]
    )
    summary = train_cls_ser.main(cls_args)
    assert summary["step"] == 2 == summary["max_step"]
    state = torch.load(base / "vgg16_cls_ser.pth", weights_only=True)
    assert set(state) == set(vgg16_cls_ser.Net().state_dict())
    # The frozen conv1_*/conv2_* kept the .caffemodel's values; the trained conv3_1 moved.
    caffe = vgg16d.convert_caffe_to_torch(toy["caffe"])
    torch.testing.assert_close(state["conv1_1.weight"], caffe["conv1_1.weight"], rtol=0, atol=0)
    assert not torch.equal(state["conv3_1.weight"], caffe["conv3_1.weight"])
    assert len(normalize_calls) == 2 * 2 + 1  # 2 steps x 2 images, then the validation image

    # 2. CAMs and CRF scores.
    infer_args = infer_cls_ser.get_args_parser().parse_args(
        [
            "--network",
            "network.vgg16_cls_ser",
            "--weights",
            str(base / "vgg16_cls_ser.pth"),
            "--infer_list",
            str(toy["train"]),
            "--cls_labels",
            str(base / "labels.npz"),
            "--scales",
            "1.0",
            "0.5",
            "--out_cam",
            str(base / "cam"),
            "--out_crf",
            str(base / "crf"),
            "--crf_workers",
            "0",
            *common,
        ]
    )
    before = len(normalize_calls)
    assert infer_cls_ser.main(infer_args)["done"] == 4
    assert len(normalize_calls) - before == 4 * 2  # every image at both scales
    ids = load_img_id_list(toy["train"])
    keys, cams = load_scores(base / "cam" / f"{ids[0]}.npz")
    assert cams.shape[1:] == load_label_png(toy["root"] / "SegmentationClass" / f"{ids[0]}.png").shape

    # 3. AffinityNet on VGG16 from the .caffemodel (GroupNorm head), 2 steps.
    aff_args = train_aff.get_args_parser().parse_args(
        [
            "--network",
            "network.vgg16_aff",
            "--weights",
            str(toy["caffe"]),
            "--train_list",
            str(toy["train"]),
            "--la_crf_dir",
            str(base / "crf_4.0"),
            "--ha_crf_dir",
            str(base / "crf_24.0"),
            "--session_name",
            str(base / "vgg16_aff"),
            "--crop_size",
            "72",
            *train_common,
        ]
    )
    before = len(normalize_calls)
    assert train_aff.main(aff_args)["step"] == 2
    assert normalize_calls[before:] == [(72, 72, 3)] * 4  # normalised after the crop, as the reference does
    aff_state = torch.load(base / "vgg16_aff.pth", weights_only=True)
    assert set(aff_state) == set(vgg16_aff.Net().state_dict())

    # 4. Random walk, with the published --crf spelling.
    rw_args = infer_aff.get_args_parser().parse_args(
        [
            "--network",
            "network.vgg16_aff",
            "--weights",
            str(base / "vgg16_aff.pth"),
            "--infer_list",
            str(toy["train"]),
            "--cam_dir",
            str(base / "cam"),
            "--out_rw",
            str(base / "rw"),
            "--crf",
            "False",
            *common,
        ]
    )
    assert rw_args.crf is False
    before = len(normalize_calls)
    assert infer_aff.main(rw_args)["done"] == 4
    assert len(normalize_calls) - before == 4
    for image_id in ids:
        label = load_label_png(base / "rw" / f"{image_id}.png")
        assert label.shape == load_label_png(toy["root"] / "SegmentationClass" / f"{image_id}.png").shape
        assert set(np.unique(label)) <= {0, *(int(k) + 1 for k in load_scores(base / "cam" / f"{image_id}.npz")[0])}


def test_resnet38_scripts_keep_the_imagenet_normalisation():
    from network import resnet38_aff, resnet38_cls_ser, resnet38d

    assert resnet38_cls_ser.Net.normalize is resnet38d.normalize
    assert resnet38_aff.Net.normalize is resnet38d.normalize
    assert vgg16_cls_ser.Net.normalize is vgg16d.normalize


@pytest.mark.parametrize(
    "backbone, cls, aff, seg",
    [
        ("resnet38", "resnet38_cls_ser", "resnet38_aff", "resnet38_seg"),
        ("vgg16", "vgg16_cls_ser", "vgg16_aff", "vgg16_seg"),
    ],
)
def test_pipeline_backbone_picks_each_stage_network(backbone, cls, aff, seg, tmp_path):
    import run_pipeline

    args = run_pipeline.get_args_parser().parse_args(
        ["--preset", "paper", "--work_dir", str(tmp_path), "--backbone", backbone, "--train_aff_args", "--network x"]
    )
    pipe = run_pipeline.Pipeline(args)

    def network_of(stage):
        flags = pipe.flags(stage)
        last = max(i for i, flag in enumerate(flags) if flag == "--network")  # argparse keeps the last one
        return flags[last + 1]

    assert [network_of(s) for s in ("train_cls", "infer_cls", "infer_aff")] == [f"network.{cls}"] * 2 + [
        f"network.{aff}"
    ]
    assert [network_of(s) for s in ("train_seg", "infer_seg")] == [f"network.{seg}"] * 2
    assert network_of("train_aff") == "x"  # the user's --<stage>_args still override
    assert pipe.flags("train_aff")[:2] == ["--network", f"network.{aff}"]


def test_demo_refuses_the_vgg16_backbone(tmp_path):
    import run_pipeline

    args = run_pipeline.get_args_parser().parse_args(
        ["--preset", "demo", "--work_dir", str(tmp_path), "--backbone", "vgg16"]
    )
    with pytest.raises(SystemExit, match="pretrains a ResNet38"):
        run_pipeline.Pipeline(args)
