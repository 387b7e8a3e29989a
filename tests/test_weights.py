"""Weight loading: MXNet ImageNet names -> our names, and ``load_weights`` on every format (docs/method.md#resnet38).

Fixtures: ``mxnet/resnet38_subset.params`` (17 real-size 'a1' arrays written by MXNet, the ``.npz`` holds the
same arrays under their MXNet names) and ``mxnet/resnet38_a1_names.txt`` (all 193 names and shapes of the
ImageNet file, ``name<TAB>d0,d1,...``). The full file is 437 MB, so a complete file is written here at width
1/8 instead, as an MXNet V2 NDArray list (``docs/formats.md#mxnet-params``).
"""

from __future__ import annotations

import logging
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import train_cls_ser
from engine import training
from network import resnet38_aff, resnet38_cls_ser
from network.resnet38d import convert_mxnet_to_torch, mxnet_to_torch_name
from network.weights import load_weights
from tests.helpers import fill_reference_weights, read_key_spec

DATA = Path(__file__).parent / "data"
MXNET = DATA / "mxnet"
SMALL = 1 / 8
IMAGENET_NAME = "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
HEAD = "fc8.weight"


def write_params_v2(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A named MXNet NDArray list of dense float32 V2 records: header, records, name table."""
    out = [struct.pack("<QQQ", 0x112, 0, len(arrays))]  # file magic, reserved, array count
    for arr in arrays.values():
        arr = np.ascontiguousarray(arr, dtype="<f4")
        # V2 magic, storage type 0 (dense), Shape64, context (cpu, 0), dtype flag 0 (float32), data.
        out.append(struct.pack(f"<Iii{arr.ndim}qiii", 0xF993FAC9, 0, arr.ndim, *arr.shape, 1, 0, 0))
        out.append(arr.tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        out.append(struct.pack("<Q", len(name.encode())) + name.encode())
    path.write_bytes(b"".join(out))
    return path


def strip_prefix(mx_name: str) -> str:
    return mx_name.split(":", 1)[1]


# =============================================================================== name mapping


def test_subset_fixture_converts():
    state = convert_mxnet_to_torch(MXNET / "resnet38_subset.params")
    expected_names = {
        "arg:conv1a_weight": "conv1a.weight",
        "arg:bn2a_branch2a_gamma": "b2.bn_branch2a.weight",
        "arg:bn2a_branch2a_beta": "b2.bn_branch2a.bias",
        "arg:res2a_branch1_weight": "b2.conv_branch1.weight",
        "arg:res2a_branch2a_weight": "b2.conv_branch2a.weight",
        "arg:bn2a_branch2b1_gamma": "b2.bn_branch2b1.weight",
        "arg:bn2a_branch2b1_beta": "b2.bn_branch2b1.bias",
        "arg:res2a_branch2b1_weight": "b2.conv_branch2b1.weight",
        "arg:bn7_gamma": "bn7.weight",
        "arg:bn7_beta": "bn7.bias",
        "aux:bn2a_branch2a_moving_mean": "b2.bn_branch2a.running_mean",
        "aux:bn2a_branch2a_moving_var": "b2.bn_branch2a.running_var",
        "aux:bn2a_branch2b1_moving_mean": "b2.bn_branch2b1.running_mean",
        "aux:bn2a_branch2b1_moving_var": "b2.bn_branch2b1.running_var",
        "aux:bn7_moving_mean": "bn7.running_mean",
        "aux:bn7_moving_var": "bn7.running_var",
    }  # and arg:linear1000_bias, the ImageNet classifier, is dropped
    with np.load(MXNET / "resnet38_subset.npz", allow_pickle=False) as npz:
        assert set(npz.files) == set(expected_names) | {"arg:linear1000_bias"}
        assert list(state) == [expected_names[k] for k in npz.files if k in expected_names]  # file order kept
        for mx_name, name in expected_names.items():
            assert state[name].dtype == torch.float32
            assert torch.equal(state[name], torch.from_numpy(npz[mx_name])), name
    spec = dict(read_key_spec(DATA / "resnet38_cls_ser_keys.txt"))
    assert all(tuple(v.shape) == spec[k] for k, v in state.items())


@pytest.mark.parametrize(
    "mx_name, name",
    [
        ("conv1a_weight", "conv1a.weight"),
        ("res4b3_branch2b1_weight", "b4_3.conv_branch2b1.weight"),
        ("bn5b2_branch2a_moving_var", "b5_2.bn_branch2a.running_var"),
        ("res6a_branch2b2_weight", "b6.conv_branch2b2.weight"),
        ("bn7_moving_mean", "bn7.running_mean"),
        ("linear1000_weight", None),
    ],
)
def test_mxnet_to_torch_name_cases(mx_name, name):
    assert mxnet_to_torch_name(mx_name) == name


def test_all_imagenet_names_map_onto_the_backbone():
    mx = read_key_spec(MXNET / "resnet38_a1_names.txt")
    assert len(mx) == 193
    mapped = {mxnet_to_torch_name(strip_prefix(name)): shape for name, shape in mx}
    assert mapped.pop(None) == (1000,)  # linear1000_weight and _bias both drop out
    spec = read_key_spec(DATA / "resnet38_cls_ser_keys.txt")
    backbone = {k: shape for k, shape in spec if not k.endswith("num_batches_tracked") and k != HEAD}
    assert len(mapped) == len(backbone) == 191  # one-to-one
    assert mapped == backbone  # same names, same shapes


@pytest.mark.parametrize("bad", ["fc7_weight", "bn_data_gamma", "res2a_branch2a_bias", "conv1a_bias"])
def test_unknown_name_raises(bad):
    with pytest.raises(KeyError, match=bad):
        mxnet_to_torch_name(bad)


def test_convert_names_the_file_and_the_unknown_array(tmp_path):
    path = write_params_v2(
        tmp_path / "odd.params", {"arg:conv1a_weight": np.zeros((8, 3, 3, 3)), "arg:fc7_weight": np.zeros(2)}
    )
    with pytest.raises(KeyError, match=r"odd\.params.*fc7_weight"):
        convert_mxnet_to_torch(path)


def test_convert_rejects_an_unnamed_list():
    with pytest.raises(ValueError, match="unnamed"):
        convert_mxnet_to_torch(MXNET / "unnamed_list.params")


# =============================================================================== a complete MXNet file


def synthetic_imagenet_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """All 193 'a1' names in file order, with width-1/8 shapes taken from our model and random values."""
    own = resnet38_cls_ser.Net(width_mult=SMALL).state_dict()
    g = np.random.default_rng(seed)
    arrays = {}
    for mx_name, full_shape in read_key_spec(MXNET / "resnet38_a1_names.txt"):
        name = mxnet_to_torch_name(strip_prefix(mx_name))
        shape = full_shape[:1] if name is None else tuple(own[name].shape)  # linear1000: any shape, dropped
        values = g.standard_normal(shape).astype(np.float32)
        arrays[mx_name] = np.abs(values) + 0.5 if mx_name.endswith("moving_var") else values
    return arrays


@pytest.fixture(scope="module")
def imagenet_small(tmp_path_factory):
    arrays = synthetic_imagenet_arrays()
    return arrays, write_params_v2(tmp_path_factory.mktemp("mx") / "a1_small.params", arrays)


def test_load_weights_from_mxnet_file(imagenet_small):
    arrays, path = imagenet_small
    model = resnet38_cls_ser.Net(width_mult=SMALL)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    load_weights(model, path, allow_missing_head=True)
    state = model.state_dict()
    for mx_name, arr in arrays.items():
        name = mxnet_to_torch_name(strip_prefix(mx_name))
        if name is not None:
            assert torch.equal(state[name], torch.from_numpy(arr)), name
    assert torch.equal(state[HEAD], init[HEAD])  # the new head keeps its Xavier init
    assert all(torch.equal(state[k], init[k]) for k in state if k.endswith("num_batches_tracked"))
    with pytest.raises(ValueError, match="head weights missing"):
        load_weights(resnet38_cls_ser.Net(width_mult=SMALL), path, allow_missing_head=False)


def test_mxnet_file_missing_a_backbone_weight(imagenet_small, tmp_path):
    arrays, _ = imagenet_small
    arrays = {k: v for k, v in arrays.items() if k != "aux:bn4b3_branch2b1_moving_var"}
    path = write_params_v2(tmp_path / "a1_incomplete.params", arrays)
    with pytest.raises(ValueError, match=r"b4_3\.bn_branch2b1\.running_var"):
        load_weights(resnet38_cls_ser.Net(width_mult=SMALL), path)


def test_md5_warning_for_the_imagenet_file_name(imagenet_small, tmp_path, caplog):
    _, path = imagenet_small
    renamed = tmp_path / IMAGENET_NAME
    shutil.copy(path, renamed)
    with caplog.at_level(logging.WARNING, logger="network.resnet38d"):
        load_weights(resnet38_cls_ser.Net(width_mult=SMALL), renamed)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "md5" in warnings[0].getMessage() and IMAGENET_NAME in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="network.resnet38d"):
        load_weights(resnet38_cls_ser.Net(width_mult=SMALL), path)  # other names are not checked
        convert_mxnet_to_torch(renamed, check_md5=False)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# =============================================================================== PyTorch checkpoints


@pytest.fixture(scope="module")
def trained_cls() -> dict[str, torch.Tensor]:
    """A width-1/8 SSENet state dict unlike any fresh init (every tensor drawn, BN counters non-zero)."""
    state = fill_reference_weights(resnet38_cls_ser.Net(width_mult=SMALL), seed=7).state_dict()
    for k in state:
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(3)
    return {k: v.clone() for k, v in state.items()}


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def assert_loaded(model: torch.nn.Module, source: dict[str, torch.Tensor], skip=()) -> None:
    state = model.state_dict()
    wrong = [k for k in source if k in state and k not in skip and not torch.equal(state[k], source[k])]
    assert not wrong, f"not loaded: {wrong[:3]}"


def test_load_our_pth(trained_cls, tmp_path):
    model = resnet38_cls_ser.Net(width_mult=SMALL)
    load_weights(model, save(trained_cls, tmp_path / "ours.pth"), allow_missing_head=False)
    assert_loaded(model, trained_cls)  # num_batches_tracked included


def test_load_pytorch04_state_dict(trained_cls, tmp_path):
    old = {k: v for k, v in trained_cls.items() if not k.endswith("num_batches_tracked")}
    model = resnet38_cls_ser.Net(width_mult=SMALL)
    load_weights(model, save(old, tmp_path / "old.pth"), allow_missing_head=False)
    assert_loaded(model, old)
    assert model.state_dict()["bn7.num_batches_tracked"].item() == 0  # left as it was


def test_load_dataparallel_prefix(trained_cls, tmp_path):
    prefixed = {f"module.{k}": v for k, v in trained_cls.items()}
    model = resnet38_cls_ser.Net(width_mult=SMALL)
    load_weights(model, save(prefixed, tmp_path / "dp.pth"), allow_missing_head=False)
    assert_loaded(model, trained_cls)


def test_load_training_checkpoint(trained_cls, tmp_path):
    ckpt = {"model": trained_cls, "optimizer": {"state": {}, "param_groups": []}, "step": 4, "epoch_done": True}
    model = resnet38_cls_ser.Net(width_mult=SMALL)
    load_weights(model, save(ckpt, tmp_path / "resnet38_cls_ser_checkpoint.pth"), allow_missing_head=False)
    assert_loaded(model, trained_cls)


def test_build_model_loads_weights(trained_cls, tmp_path):
    path = save(trained_cls, tmp_path / "ours.pth")
    args = train_cls_ser.get_args_parser().parse_args(["--width_mult", str(SMALL), "--weights", str(path)])
    assert_loaded(training.build_model(args), trained_cls)


@pytest.mark.parametrize("key", ["b3.conv_branch2a.weight", HEAD])
def test_wrong_shape_raises(trained_cls, tmp_path, key):
    bad = dict(trained_cls)
    bad[key] = torch.zeros(bad[key].shape[0] + 1, *bad[key].shape[1:])
    # A class head of another class count gets its own message, naming both counts (another --dataset).
    expected = r"its head \(fc8.weight\) has 21 classes, this network 20" if key == HEAD else rf"{key} has shape"
    with pytest.raises(ValueError, match=expected):
        load_weights(resnet38_cls_ser.Net(width_mult=SMALL), save(bad, tmp_path / "bad.pth"))


def test_missing_weights(trained_cls, tmp_path):
    no_head = {k: v for k, v in trained_cls.items() if k != HEAD}
    path = save(no_head, tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="head weights missing.*fc8.weight"):
        load_weights(resnet38_cls_ser.Net(width_mult=SMALL), path, allow_missing_head=False)
    model = resnet38_cls_ser.Net(width_mult=SMALL)
    init_head = model.fc8.weight.detach().clone()
    load_weights(model, path, allow_missing_head=True)
    assert_loaded(model, no_head)
    assert torch.equal(model.fc8.weight, init_head)

    no_b5 = {k: v for k, v in trained_cls.items() if k != "b5.conv_branch1.weight"}
    with pytest.raises(ValueError, match=r"backbone weights missing.*b5\.conv_branch1\.weight"):
        load_weights(resnet38_cls_ser.Net(width_mult=SMALL), save(no_b5, tmp_path / "no_b5.pth"))


def test_affinity_net_from_a_cls_checkpoint(trained_cls, tmp_path):
    path = save(trained_cls, tmp_path / "cls.pth")
    model = resnet38_aff.Net(width_mult=SMALL)
    heads = ("f8_3", "f8_4", "f8_5", "f9")
    init = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(heads)}
    load_weights(model, path)  # fc8 is not part of AffinityNet: ignored
    assert_loaded(model, trained_cls)
    state = model.state_dict()
    assert len(init) == 4 and all(torch.equal(state[k], v) for k, v in init.items())
    with pytest.raises(ValueError, match="head weights missing"):
        load_weights(resnet38_aff.Net(width_mult=SMALL), path, allow_missing_head=False)


def test_unreadable_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="--weights"):
        load_weights(resnet38_cls_ser.Net(width_mult=SMALL), tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        load_weights(resnet38_cls_ser.Net(width_mult=SMALL), save([1, 2], tmp_path / "list.pth"))
