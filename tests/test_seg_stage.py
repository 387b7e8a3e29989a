"""Segmentation stage: loss, network, dataset, train_seg.py and infer_seg.py (docs/method.md#segmentation)."""

from __future__ import annotations

import argparse
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import evaluation
import infer_seg
import train_seg
from engine import inference
from network import resnet38_cls_ser, resnet38d, vgg16_seg, vgg16d
from network.resnet38_seg import Net, segmentation_loss
from network.weights import load_weights
from tests.caffe_wire import caffemodel_of
from tests.helpers import quick_train_flags
from tool import imutils
from tool.dataset import color_map, load_img_id_list
from tool.fileio import load_label_png, save_png
from tool.torchutils import make_optimizer
from voc12.data import VOC12SegDataset, load_rgb
from voc12.dataset import VOC12
from voc12.make_toy_voc import make_toy_voc
from voc12.voc import jpeg_path, segmentation_path

WIDTH = 0.125


# =============================================================================== loss


def test_segmentation_loss_hand_values():
    # 3 classes on a 2 x 2 image; labels [[0, 255], [2, 1]]:
    #   (0, 0): logits (2, 0, 0), label 0 -> -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = 0.239545
    #   (0, 1): ignored, whatever its logits (100 on a wrong class would dominate otherwise)
    #   (1, 0): logits (0, 0, 0), label 2 -> log 3 = 1.098612
    #   (1, 1): logits (0, 1, 0), label 1 -> log(1 + 2 e^-1) = 0.551445
    # mean over the 3 labelled pixels = (0.239545 + 1.098612 + 0.551444) / 3 = 0.629867
    logits = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    logits[0, 0, 0, 0] = 2.0
    logits[0, 1, 0, 1] = 100.0
    logits[0, 1, 1, 1] = 1.0
    labels = torch.tensor([[[0, 255], [2, 1]]], dtype=torch.uint8)
    want = (math.log(1 + 2 * math.exp(-2)) + math.log(3) + math.log(1 + 2 * math.exp(-1))) / 3
    assert segmentation_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(0.629867, rel=1e-5)


def test_segmentation_loss_all_ignored_is_zero_with_a_gradient():
    logits = torch.randn(2, 21, 3, 3, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((2, 3, 3), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


# =============================================================================== network


def test_seg_net_shapes_groups_and_frozen_parts():
    model = Net(width_mult=WIDTH).eval()
    x = torch.randn(1, 3, 64, 52)
    with torch.no_grad():
        assert model.forward_logits(x).shape == (1, 21, 8, 7)  # output stride 8, ceil
        assert model(x).shape == (1, 21, 64, 52)  # bilinear to the input size
    assert model.fc8_seg_conv1.dilation == (12, 12) and model.fc8_seg_conv1.padding == (12, 12)
    assert model.fc8_seg_conv1.in_channels == 512 and model.fc8_seg_conv1.out_channels == 64  # 4096, 512 at 1/8
    assert model.fc8_seg_conv2.kernel_size == (3, 3) and model.fc8_seg_conv2.out_channels == 21
    groups = model.parameter_groups()
    assert {id(p) for p in groups[2]} == {id(model.fc8_seg_conv1.weight), id(model.fc8_seg_conv2.weight)}
    assert {id(p) for p in groups[3]} == {id(model.fc8_seg_conv1.bias), id(model.fc8_seg_conv2.bias)}
    assert groups[1] == []  # the backbone has no conv biases
    assert not any(p.requires_grad for p in model.conv1a.parameters())
    assert model.train() is model and all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_seg_net_loads_a_backbone_checkpoint_only_with_allow_missing_head(tmp_path):
    from network.weights import load_weights

    cls_path = tmp_path / "cls.pth"
    torch.save(resnet38_cls_ser.Net(width_mult=WIDTH).state_dict(), cls_path)
    model = Net(width_mult=WIDTH)
    head_before = model.fc8_seg_conv2.weight.clone()
    load_weights(model, cls_path, allow_missing_head=True)  # fc8 of the CAM head is ignored
    torch.testing.assert_close(model.fc8_seg_conv2.weight, head_before)
    with pytest.raises(ValueError, match="head weights missing"):
        load_weights(Net(width_mult=WIDTH), cls_path, allow_missing_head=False)


# =============================================================================== data


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("seg") / "VOC2012"
    make_toy_voc(root, num_train=4, num_val=2, size=64, seed=5)
    lists = root / "ImageSets" / "Segmentation"
    return {"root": root, "train_list": lists / "train.txt", "val_list": lists / "val.txt"}


def test_random_scale_resizes_image_and_label_together():
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    label = Image.fromarray(np.kron(np.array([[1, 2], [3, 255]], np.uint8), np.ones((5, 10), np.uint8)))
    big_img, big_label = imutils.random_scale(img, label, 2.0, 2.0, np.random.default_rng(0))
    assert big_img.size == big_label.size == (40, 20)
    # Nearest keeps the label values and the quadrants: [[1, 2], [3, 255]] blown up 10x.
    np.testing.assert_array_equal(np.asarray(big_label), np.kron([[1, 2], [3, 255]], np.ones((10, 20))))


@pytest.mark.parametrize("normalize", [resnet38d.normalize, vgg16d.normalize], ids=["imagenet", "caffe"])
def test_seg_dataset_pads_the_label_with_ignore_and_keeps_it_aligned(toy, normalize):
    # The image is normalised by the network's own normaliser (Net.normalize), then padded with 0.
    dataset = VOC12SegDataset(
        toy["train_list"],
        VOC12(toy["root"]),
        toy["root"] / "SegmentationClass",
        crop_size=80,
        scale_range=(1.0, 1.0),
        color_jitter=False,
        normalize=normalize,
    )
    torch.manual_seed(0)
    flips = set()
    for index in range(len(dataset)):
        for _ in range(3):
            img, label = dataset[index]
            assert img.shape == (3, 80, 80) and img.dtype == torch.float32
            assert label.shape == (80, 80) and label.dtype == torch.int64
            image_id = dataset.ids[index]
            gt = load_label_png(segmentation_path(toy["root"], image_id))
            rgb = normalize(np.asarray(load_rgb(jpeg_path(toy["root"], image_id))))
            h, w = gt.shape  # 48 x 64: the 80 x 80 crop pads both axes
            rows, cols = np.nonzero(np.abs(img.numpy()).sum(0) > 0)
            top, left = rows.min(), cols.min()
            pasted = label.numpy()[top : top + h, left : left + w]
            image_part = img.numpy()[:, top : top + h, left : left + w].transpose(1, 2, 0)
            flipped = np.array_equal(pasted, gt[:, ::-1])
            assert flipped or np.array_equal(pasted, gt)
            np.testing.assert_allclose(image_part, rgb[:, ::-1] if flipped else rgb, atol=1e-6)  # same flip
            flips.add(flipped)
            outside = np.ones((80, 80), bool)
            outside[top : top + h, left : left + w] = False
            assert (label.numpy()[outside] == 255).all() and (img.numpy()[:, outside] == 0).all()
    assert flips == {True, False}


def test_seg_dataset_names_bad_and_missing_labels(toy, tmp_path):
    ids = load_img_id_list(toy["train_list"])
    with pytest.raises(FileNotFoundError, match="label PNG"):
        VOC12SegDataset(toy["train_list"], VOC12(toy["root"]), tmp_path, normalize=resnet38d.normalize)
    for image_id in ids:
        gt = load_label_png(segmentation_path(toy["root"], image_id)).copy()
        gt[0, 0] = 30
        save_png(tmp_path / f"{image_id}.png", gt)
    dataset = VOC12SegDataset(toy["train_list"], VOC12(toy["root"]), tmp_path, normalize=resnet38d.normalize)
    with pytest.raises(ValueError, match=rf"{ids[0]}\.png: label values \[30\]"):
        dataset[0]


# =============================================================================== train_seg.py


def train_args(toy: dict, session: Path, *extra: str) -> argparse.Namespace:
    return train_seg.get_args_parser().parse_args(
        [
            "--voc12_root",
            str(toy["root"]),
            "--train_list",
            str(toy["train_list"]),
            "--label_dir",
            str(toy["root"] / "SegmentationClass"),
            "--session_name",
            str(session),
            *quick_train_flags(),
            "--from_scratch",
            "--width_mult",
            str(WIDTH),
            "--crop_size",
            "48",
            "--bn_calib_batches",
            "1",
            *extra,
        ]
    )


def test_train_seg_defaults_are_the_literature_recipe():
    args = train_seg.get_args_parser().parse_args(["--label_dir", "out_rw"])
    assert (args.batch_size, args.max_epoches, args.lr, args.momentum, args.wt_dec) == (10, 19, 0.001, 0.9, 5e-4)
    assert args.crop_size == 448 and tuple(args.scale_range) == (0.5, 1.5) and not args.no_color_jitter
    assert args.train_list == "voc12/train_aug.txt" and args.network == "network.resnet38_seg"


def test_train_seg_steps_resumes_and_validates(toy, tmp_path, one_thread):
    session = tmp_path / "seg"
    summary = train_seg.main(train_args(toy, session, "--max_steps", "1"))
    assert summary["step"] == 1 and summary["max_step"] == 2
    assert (tmp_path / "seg_checkpoint.pth").exists() and not (tmp_path / "seg.pth").exists()
    ckpt = torch.load(tmp_path / "seg_checkpoint.pth", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["optimizer"]["poly"]["global_step"] == 1
    summary = train_seg.main(train_args(toy, session, "--val_list", str(toy["val_list"])))  # resumes
    assert summary["step"] == 2
    state = torch.load(tmp_path / "seg.pth", weights_only=True)
    assert set(state) == set(Net(width_mult=WIDTH).state_dict())
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not torch.equal(state["fc8_seg_conv2.weight"], ckpt["model"]["fc8_seg_conv2.weight"])  # it trained on
    epoch = json.loads((tmp_path / "seg_log.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(epoch["loss"]) and 0.0 <= epoch["val_mIoU"] <= 100.0


def test_train_seg_one_step_lowers_the_loss_on_its_batch(toy):
    # One SGD step at a large learning rate on a fixed batch must reduce that batch's loss.
    dataset = VOC12SegDataset(
        toy["train_list"],
        VOC12(toy["root"]),
        toy["root"] / "SegmentationClass",
        crop_size=48,
        color_jitter=False,
        normalize=resnet38d.normalize,
    )
    torch.manual_seed(0)
    batch = [torch.stack(t) for t in zip(dataset[0], dataset[1], strict=True)]
    model = Net(width_mult=WIDTH)
    model.init_backbone_from_scratch()
    model.calibrate_batchnorm([lambda: model(batch[0])])
    model.eval()  # dropout off: the two losses see the same network function; gradients still flow
    optimizer = make_optimizer(model, 0.05, 5e-4, max_step=10, sgd_momentum=0.9)
    before, scalars, _ = train_seg.loss_fn(model, batch, torch.device("cpu"))
    assert scalars["loss"] == pytest.approx(before.item()) and before.item() > 0
    before.backward()
    optimizer.step()
    after, _, _ = train_seg.loss_fn(model, batch, torch.device("cpu"))
    assert after.item() < before.item()


# =============================================================================== infer_seg.py


@pytest.fixture(scope="module")
def seg_weights(toy, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("segw") / "seg_random.pth"
    torch.save(Net(width_mult=WIDTH).state_dict(), path)
    return path


def infer_args(toy: dict, weights: Path, *extra: str) -> argparse.Namespace:
    return infer_seg.get_args_parser().parse_args(
        [
            "--weights",
            str(weights),
            "--infer_list",
            str(toy["val_list"]),
            "--voc12_root",
            str(toy["root"]),
            "--width_mult",
            str(WIDTH),
            "--num_workers",
            "0",
            "--device",
            "cpu",
            "--scales",
            "1.0",
            "0.5",
            *extra,
        ]
    )


def test_infer_probs_average_scales_and_flips_and_are_flip_equivariant(toy, seg_weights):
    a = infer_args(toy, seg_weights)
    model = inference.load_model(a.network, a.width_mult, a.weights, torch.device("cpu"))
    img = load_rgb(jpeg_path(toy["root"], load_img_id_list(toy["val_list"])[0]))
    size = (img.height, img.width)

    def probs(image, scales, flip=True):
        inputs = [torch.from_numpy(x) for x in imutils.msf_inputs(image, scales, resnet38d.normalize)]
        return infer_seg.infer_probs(model, inputs, size, torch.device("cpu"), flip)

    p = probs(img, (1.0, 0.5))
    assert p.shape == (21, *size)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    # Averaging the flips makes the prediction of the mirrored image the mirror of the prediction.
    mirrored = probs(img.transpose(Image.FLIP_LEFT_RIGHT), (1.0, 0.5))
    np.testing.assert_allclose(mirrored, p[:, :, ::-1], atol=1e-5)
    # Two scales average to the mean of the single-scale ones.
    np.testing.assert_allclose(p, (probs(img, (1.0,)) + probs(img, (0.5,))) / 2, atol=1e-6)
    no_flip = probs(img, (1.0,), flip=False)
    assert not np.allclose(no_flip, probs(img, (1.0,)))


def test_infer_seg_outputs_server_layout_archive_and_evaluation(toy, seg_weights, tmp_path):
    archive = tmp_path / "submission.tar.gz"
    args = infer_args(
        toy,
        seg_weights,
        "--out_seg",
        str(tmp_path / "seg"),
        "--test_server_dir",
        str(tmp_path / "server"),
        "--archive",
        str(archive),
        "--crf",
    )
    summary = infer_seg.main(args)
    ids = load_img_id_list(toy["val_list"])
    assert summary["done"] == len(ids) and summary["archived"] == len(ids)
    server = tmp_path / "server" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    for image_id in ids:
        with Image.open(tmp_path / "seg" / f"{image_id}.png") as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3), color_map())
            label = np.asarray(png)
        with Image.open(jpeg_path(toy["root"], image_id)) as jpg:
            assert label.shape == (jpg.height, jpg.width)
        assert label.max() <= 20
        np.testing.assert_array_equal(load_label_png(server / f"{image_id}.png"), label)
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    assert names == sorted(f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in ids)

    # evaluation.py scores the folder as it scores pseudo labels.
    eval_args = evaluation.get_args_parser().parse_args(
        [
            "--list",
            str(toy["val_list"]),
            "--predict_dir",
            str(tmp_path / "seg"),
            "--gt_dir",
            str(toy["root"] / "SegmentationClass"),
            "--logfile",
            "",
            "--num_workers",
            "0",
        ]
    )
    result = evaluation.main(eval_args)
    assert result["num_images"] == len(ids) and 0.0 <= result["mIoU"] <= 100.0

    # A second run skips everything and rebuilds the archive.
    again = infer_seg.main(args)
    assert again["done"] == 0 and again["skipped"] == len(ids) and again["archived"] == len(ids)


def test_infer_seg_archive_refuses_a_partial_layout(toy, tmp_path):
    ids = load_img_id_list(toy["val_list"])
    folder = tmp_path / infer_seg.SERVER_SUBDIR
    save_png(folder / f"{ids[0]}.png", np.zeros((4, 4), np.uint8), color_map())
    with pytest.raises(ValueError, match=f"1 of {len(ids)} predictions missing.*{ids[1]}"):
        infer_seg.write_archive(tmp_path, ids, tmp_path / "a.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists()


def test_infer_seg_needs_an_output(toy, seg_weights):
    with pytest.raises(SystemExit, match="nothing to write"):
        infer_seg.main(infer_args(toy, seg_weights))
    with pytest.raises(SystemExit, match="--test_server_dir"):
        infer_seg.main(infer_args(toy, seg_weights, "--out_seg", "x", "--archive", "a.tar.gz"))


# =============================================================================== VGG16 DeepLab-LargeFOV


def test_vgg16_seg_is_deeplab_largefov_with_fc8_the_only_new_layer():
    model = vgg16_seg.Net(width_mult=WIDTH).eval()
    x = torch.randn(1, 3, 64, 52)
    with torch.no_grad():
        assert model.forward_logits(x).shape == (1, 21, 8, 7)  # output stride 8, ceil
        assert model(x).shape == (1, 21, 64, 52)  # bilinear to the input size
    assert model.fc6.kernel_size == (3, 3) and model.fc6.dilation == (12, 12) and model.fc6.padding == (12, 12)
    assert (model.fc6.in_channels, model.fc6.out_channels) == (64, 128)  # 512 -> 1024 at 1/8
    assert model.fc7.kernel_size == (1, 1) and model.fc8.kernel_size == (1, 1) and model.fc8.out_channels == 21
    assert all(m.bias is not None for m in (model.fc6, model.fc7, model.fc8))
    assert isinstance(model.drop6, nn.Dropout2d) and isinstance(model.drop7, nn.Dropout2d)
    assert model.drop6.p == model.drop7.p == 0.5
    assert model.fc8.weight.std().item() == pytest.approx(0.01, rel=0.1) and not model.fc8.bias.any()
    # The 20M caffemodel's fc6 is 1024 x 512 x 3 x 3: pretrained, so in the 1x / 2x groups.
    assert tuple(vgg16_seg.Net().fc6.weight.shape) == (1024, 512, 3, 3)
    groups = [{id(p) for p in g} for g in model.parameter_groups()]
    assert groups[2] == {id(model.fc8.weight)} and groups[3] == {id(model.fc8.bias)}
    assert {id(model.fc6.weight), id(model.fc7.weight), id(model.conv3_1.weight)} <= groups[0]
    assert {id(model.fc6.bias), id(model.fc7.bias)} <= groups[1]
    frozen = [p for name in vgg16d.FROZEN_MODULES for p in getattr(model, name).parameters()]
    assert (
        frozen and not any(p.requires_grad for p in frozen) and not any(id(p) in set().union(*groups) for p in frozen)
    )


@pytest.fixture(scope="module")
def vgg_caffemodel(tmp_path_factory) -> tuple[Path, dict]:
    """A hand-built 1/8-width vgg16_20M.caffemodel: the backbone with fc6/fc7 and a 1000-class ImageNet fc8."""
    torch.manual_seed(1)
    state = dict(vgg16d.Net(width_mult=WIDTH).state_dict())
    state["fc8.weight"] = torch.randn(1000, 128, 1, 1)
    state["fc8.bias"] = torch.randn(1000)
    path = tmp_path_factory.mktemp("vgg") / "vgg16_20M.caffemodel"
    path.write_bytes(caffemodel_of(state))
    return path, state


def test_vgg16_seg_loads_fc6_fc7_from_the_caffemodel_and_keeps_its_fc8(vgg_caffemodel):
    path, state = vgg_caffemodel
    torch.manual_seed(0)
    model = vgg16_seg.Net(width_mult=WIDTH)
    fc8 = model.fc8.weight.detach().clone()
    load_weights(model, path, allow_missing_head=True)
    for name in ("conv1_1", "conv5_3", "fc6", "fc7"):
        torch.testing.assert_close(getattr(model, name).weight.detach(), state[f"{name}.weight"], rtol=0, atol=0)
        torch.testing.assert_close(getattr(model, name).bias.detach(), state[f"{name}.bias"], rtol=0, atol=0)
    torch.testing.assert_close(model.fc8.weight.detach(), fc8, rtol=0, atol=0)  # the ImageNet classifier is ignored


def test_vgg16_seg_trains_two_steps_from_a_caffemodel_and_infers(toy, vgg_caffemodel, tmp_path, one_thread):
    path, state = vgg_caffemodel
    argv = [
        "--network",
        "network.vgg16_seg",
        "--weights",
        str(path),
        "--voc12_root",
        str(toy["root"]),
        "--train_list",
        str(toy["train_list"]),
        "--label_dir",
        str(toy["root"] / "SegmentationClass"),
        "--session_name",
        str(tmp_path / "vseg"),
        *quick_train_flags(),
        "--width_mult",
        str(WIDTH),
        "--crop_size",
        "48",
        "--val_list",
        str(toy["val_list"]),
    ]
    summary = train_seg.main(train_seg.get_args_parser().parse_args(argv))
    assert summary["step"] == summary["max_step"] == 2  # 4 images, batch 2
    trained = torch.load(tmp_path / "vseg.pth", weights_only=True)
    assert set(trained) == set(vgg16_seg.Net(width_mult=WIDTH).state_dict())
    assert all(torch.isfinite(v).all() for v in trained.values())
    torch.testing.assert_close(trained["conv1_1.weight"], state["conv1_1.weight"], rtol=0, atol=0)  # frozen
    assert not torch.equal(trained["fc6.weight"], state["fc6.weight"])  # pretrained, and trained on
    epoch = json.loads((tmp_path / "vseg_log.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= epoch["val_mIoU"] <= 100.0

    args = infer_args(toy, tmp_path / "vseg.pth", "--network", "network.vgg16_seg", "--out_seg", str(tmp_path / "out"))
    assert infer_seg.main(args)["done"] == len(load_img_id_list(toy["val_list"]))
    # The inference normalised with the network's own (Caffe BGR-mean) normaliser, not ImageNet's.
    model = inference.load_model(args.network, args.width_mult, args.weights, torch.device("cpu"))
    image_id = load_img_id_list(toy["val_list"])[0]
    img = load_rgb(jpeg_path(toy["root"], image_id))
    inputs = [torch.from_numpy(x) for x in imutils.msf_inputs(img, (1.0, 0.5), vgg16d.normalize)]
    want = infer_seg.infer_probs(model, inputs, (img.height, img.width), torch.device("cpu")).argmax(0)
    got = load_label_png(tmp_path / "out" / f"{image_id}.png")
    np.testing.assert_array_equal(got, want)
