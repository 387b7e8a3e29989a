"""VGG16 backbone, its SSENet and AffinityNet heads, and the .caffemodel reader (docs/method.md#vgg16).

The .caffemodel files are built here byte by byte from the protobuf wire format
(docs/formats.md#caffemodel), in both layer layouts, so the reader is checked
against an encoding written independently of it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from network import heads, vgg16_aff, vgg16_cls_ser, vgg16d
from network.weights import load_weights
from tests.caffe_wire import caffemodel_of, key, layer, length_delimited, net, varint
from tests.helpers import fill_reference_weights, read_key_spec
from tool.caffemodel import CaffeModelError, read_caffemodel

DATA = Path(__file__).parent / "data"
SMALL = 1 / 8


# --------------------------------------------------------------------------- the networks


@pytest.mark.parametrize(
    "net_cls, spec", [(vgg16_cls_ser.Net, "vgg16_cls_ser_keys.txt"), (vgg16_aff.Net, "vgg16_aff_keys.txt")]
)
def test_state_dict_names_and_shapes_match_spec(net_cls, spec):
    state = net_cls().state_dict()
    expected = read_key_spec(DATA / spec)  # sorted by name
    assert sorted(state) == [name for name, _ in expected]
    for name, shape in expected:
        assert tuple(state[name].shape) == shape, name


@pytest.mark.parametrize(
    "net_cls, fixture, seed",
    [(vgg16_cls_ser.Net, "forward_vgg16_cls_ser.npz", 48), (vgg16_aff.Net, "forward_vgg16_aff.npz", 49)],
)
def test_forward_matches_reference_vectors(net_cls, fixture, seed):
    ref = np.load(DATA / fixture)
    model = fill_reference_weights(net_cls(), seed=seed).eval()
    with torch.no_grad():
        x = torch.from_numpy(ref["input"])
        out = model(x)
        feats = model.forward_as_dict(x)
    assert out.shape == ref["output"].shape
    # Measured against the vectors (torch 2.14, AMD EPYC, 1 and 2 threads): max abs error <= 4.2e-7.
    np.testing.assert_allclose(out.numpy(), ref["output"], rtol=1e-5, atol=1e-5)
    for name in ("conv4", "conv5", "conv5fc"):
        np.testing.assert_allclose(feats[name].mean(dim=(2, 3)).numpy(), ref[f"{name}_mean"], rtol=1e-5, atol=1e-6)


def test_normalize_matches_reference_and_inverts():
    ref = np.load(DATA / "vgg16_normalize.npz")
    out = vgg16_cls_ser.Net.normalize(ref["image"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref["normalized"])
    # By hand: pixel (R, G, B) = (255, 0, 10) -> (10 - 104.008, 0 - 116.669, 255 - 122.675).
    pixel = vgg16d.normalize(np.array([[[255, 0, 10]]], np.uint8))[0, 0]
    np.testing.assert_allclose(pixel, [-94.008, -116.669, 132.325], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(vgg16d.denormalize(out), ref["image"])
    with pytest.raises(ValueError, match="RGB"):
        vgg16d.normalize(np.zeros((3, 3), np.uint8))


@pytest.mark.parametrize("width", [1.0, SMALL])
def test_stride_8_feature_shapes(width):
    model = vgg16d.Net(width_mult=width).eval()
    with torch.no_grad():
        feats = model.forward_as_dict(torch.zeros(1, 3, 61, 45))
    c = max(1, round(512 * width))
    # ceil(61 / 8) = 8, ceil(45 / 8) = 6: 3x3 pools with padding 1 give ceil(n / 2).
    assert feats["conv4"].shape == (1, c, 8, 6)
    assert feats["conv5"].shape == (1, c, 8, 6)
    assert feats["conv5fc"].shape == (1, 2 * c, 8, 6)


def test_small_width_heads():
    cls = vgg16_cls_ser.Net(width_mult=SMALL).eval()
    aff = vgg16_aff.Net(width_mult=SMALL).eval()
    assert list(cls.state_dict()) == list(vgg16_cls_ser.Net().state_dict())
    assert cls.fc8.weight.shape == (20, 128, 1, 1)
    assert aff.gn8_3.num_groups == 8 and aff.gn8_3.num_channels == 8  # 64 / 8 channels keep 8 groups
    with torch.no_grad():
        assert cls(torch.randn(1, 3, 37, 50)).shape == (1, 20, 37, 50)
        a = aff(torch.randn(1, 3, 96, 128))
    assert a.shape == (1, 34, 64) and bool(((a > 0) & (a <= 1)).all())
    assert heads.group_norm(32, 24).num_groups == 8  # gcd: a group count that divides the channels


def test_dilations_and_pools():
    cls, aff = vgg16_cls_ser.Net(width_mult=SMALL), vgg16_aff.Net(width_mult=SMALL)
    assert cls.fc6.dilation == (1, 1) and aff.fc6.dilation == (4, 4) and aff.fc6.padding == (4, 4)
    assert cls.conv5_1.dilation == (2, 2) and cls.conv4_3.dilation == (1, 1)
    assert [cls.pool1.stride, cls.pool2.stride, cls.pool3.stride, cls.pool4.stride] == [2, 2, 2, 1]


def test_frozen_layers_and_train_mode():
    model = vgg16_cls_ser.Net(width_mult=SMALL)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"conv{b}_{i}.{k}" for b in (1, 2) for i in (1, 2) for k in ("weight", "bias")}
    assert model.train() is model and model.training and model.dropout7.training
    assert model.eval() is model and not model.training


def test_parameter_groups_as_published():
    aff = vgg16_aff.Net(width_mult=SMALL)
    groups = aff.get_parameter_groups()
    assert groups == aff.parameter_groups()
    ids = [[id(p) for p in g] for g in groups]
    # Pretrained: conv3_1 .. fc7, then the GroupNorm affines (not "from scratch" layers in the published code).
    gn = [aff.gn8_3, aff.gn8_4, aff.gn8_5]
    assert ids[0] == [id(getattr(aff, n).weight) for n in _trained_backbone()] + [id(m.weight) for m in gn]
    assert ids[1] == [id(getattr(aff, n).bias) for n in _trained_backbone()] + [id(m.bias) for m in gn]
    assert ids[2] == [id(getattr(aff, n).weight) for n in ("f8_3", "f8_4", "f8_5", "f9")]
    assert ids[3] == []
    cls = vgg16_cls_ser.Net(width_mult=SMALL)
    cls_groups = cls.get_parameter_groups()
    assert [len(g) for g in cls_groups] == [11, 11, 1, 0] and cls_groups[2][0] is cls.fc8.weight


def _trained_backbone() -> list[str]:
    return [n for block in vgg16d.BLOCKS for n, _, _ in block if not n.startswith(("conv1", "conv2"))] + ["fc6", "fc7"]


# --------------------------------------------------------------------------- the .caffemodel reader


@pytest.mark.parametrize(
    "kwargs",
    [
        {"layout": "shape", "packed": True},
        {"layout": "shape", "packed": False},
        {"layout": "legacy", "packed": True, "v1": True},
        {"layout": "legacy", "packed": False, "v1": True},
        {"layout": "shape", "packed": True, "double": True},
        {"layout": "legacy", "packed": False, "double": True},
    ],
)
def test_caffemodel_round_trip(tmp_path, kwargs):
    g = np.random.default_rng(0)
    weights = {
        "conv1_1.weight": torch.from_numpy(g.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        "conv1_1.bias": torch.from_numpy(g.standard_normal(4).astype(np.float32)),
        "fc7.weight": torch.from_numpy(g.standard_normal((5, 4, 1, 1)).astype(np.float32)),
        "fc7.bias": torch.tensor([1.5, -2.0, 0.25, 1e-3, 3e4]),
    }
    path = tmp_path / "small.caffemodel"
    path.write_bytes(caffemodel_of(weights, **kwargs))
    converted = vgg16d.convert_caffe_to_torch(path)
    assert list(converted) == list(weights)
    for k, v in weights.items():
        assert converted[k].dtype == torch.float32 and converted[k].shape == v.shape, k  # legacy 1x1x1xN bias -> N
        torch.testing.assert_close(converted[k], v, rtol=0, atol=0)


def test_caffemodel_by_hand_values_and_both_layouts_in_one_file(tmp_path):
    # layer "a": blob of shape (2,) = [1.0, -0.5] packed; legacy layer "b": one 1x1x1x1 blob 7.0 unpacked;
    # a layer without blobs in between, and unknown NetParameter fields (name, input_dim) around them.
    one = struct.pack("<f", 1.0) + struct.pack("<f", -0.5)
    blob_a = length_delimited(7, key(1, 0) + varint(2)) + length_delimited(5, one)
    blob_b = b"".join(key(f, 0) + varint(1) for f in (1, 2, 3, 4)) + key(5, 5) + struct.pack("<f", 7.0)
    data = (
        length_delimited(1, b"net")
        + key(4, 0)
        + varint(3)
        + layer("a", [blob_a])
        + layer("pool", [])
        + layer("b", [blob_b], v1=True)
    )
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(data)
    layers = read_caffemodel(path)
    assert list(layers) == ["a", "b"]
    np.testing.assert_array_equal(layers["a"][0], [1.0, -0.5])
    assert layers["b"][0].shape == (1, 1, 1, 1) and layers["b"][0].item() == 7.0


def test_caffemodel_loads_into_vgg16_networks(tmp_path):
    source = fill_reference_weights(vgg16_cls_ser.Net(width_mult=SMALL), seed=3)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc8")}
    # ImageNet init files carry their own classifier: 1000 classes, ignored (our fc8 starts from scratch).
    backbone["fc8.weight"] = torch.zeros(1000, 128, 1, 1)
    backbone["fc8.bias"] = torch.zeros(1000)
    path = tmp_path / "vgg16_20M.caffemodel"
    path.write_bytes(caffemodel_of(backbone))
    for net_cls in (vgg16_cls_ser.Net, vgg16_aff.Net):
        model = net_cls(width_mult=SMALL)
        head = {
            k: v.clone()
            for k, v in model.state_dict().items()
            if k.split(".")[0] in model.head_layer_names + model.new_layer_names
        }
        load_weights(model, path, allow_missing_head=True)
        state = model.state_dict()
        for k, v in backbone.items():
            if not k.startswith("fc8"):
                torch.testing.assert_close(state[k], v, rtol=0, atol=0)
        for k, v in head.items():
            torch.testing.assert_close(state[k], v)  # head left at its init
    with pytest.raises(ValueError, match="head weights missing"):
        load_weights(vgg16_cls_ser.Net(width_mult=SMALL), path, allow_missing_head=False)


def test_caffemodel_truncated_and_foreign_files(tmp_path):
    weights = {"conv1_1.weight": torch.ones(2, 3, 3, 3), "conv1_1.bias": torch.zeros(2)}
    data = caffemodel_of(weights)
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[:-7])
    with pytest.raises(CaffeModelError, match=r"cut\.caffemodel: byte \d+: .*(cut short|truncated)"):
        read_caffemodel(cut)
    # A PNG header: the first byte 0x89 starts a varint key whose wire type is 1 (field 17), then runs short.
    foreign = tmp_path / "image.caffemodel"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))
    with pytest.raises(CaffeModelError, match=r"image\.caffemodel: byte \d+"):
        read_caffemodel(foreign)
    text = tmp_path / "text.caffemodel"
    text.write_bytes(b"name: 'VGG'\nlayer {\n")  # a prototxt is text, not a binary NetParameter
    with pytest.raises(CaffeModelError, match=r"text\.caffemodel: byte \d+"):
        read_caffemodel(text)
    empty_net = tmp_path / "empty.caffemodel"
    empty_net.write_bytes(net([layer("relu", [], type_="ReLU")]))
    with pytest.raises(CaffeModelError, match="no layer with blobs"):
        read_caffemodel(empty_net)
    bad_shape = tmp_path / "shape.caffemodel"
    bad_shape.write_bytes(net([layer("c", [length_delimited(7, key(1, 0) + varint(3)) + key(5, 5) + b"\0\0\0\0"])]))
    with pytest.raises(CaffeModelError, match=r"blob shape \(3,\) needs 3 values, it holds 1"):
        read_caffemodel(bad_shape)
    with pytest.raises(FileNotFoundError):
        read_caffemodel(tmp_path / "missing.caffemodel")


def test_groupnorm_is_in_the_trained_modules():
    aff = vgg16_aff.Net(width_mult=SMALL)
    assert all(isinstance(getattr(aff, n), nn.GroupNorm) for n in ("gn8_3", "gn8_4", "gn8_5"))
    assert all(p.requires_grad for p in aff.gn8_5.parameters())
