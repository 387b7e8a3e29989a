"""Tests for tool/mxnet_params.py, the NumPy reader of MXNet ``.params`` files (docs/method.md#resnet38).

Fixtures in tests/data/mxnet/ were written by MXNet 1.9.1; each ``X.params`` has an ``X.npz`` with the
arrays it must read to. Legacy (pre-0.11) and V1 records have no MXNet-written fixture here, so those
files are built byte by byte below from docs/formats.md#mxnet-params.
"""

from __future__ import annotations

import gc
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tool.mxnet_params import MXNetParamsError, load

DATA = Path(__file__).parent / "data" / "mxnet"
FIXTURES = [
    "dense_v2_small",
    "dtypes",
    "dtypes_bool_bf16",
    "unnamed_list",
    "resnet38_subset",
    "npx_v3",
    "sparse_v2",
    "edge_cases_v2",
]
NAMED = {name for name in FIXTURES if name != "unnamed_list"}

# ---------------------------------------------------------------------------------------------
# A minimal writer, test-only (docs/formats.md#mxnet-params): header, records, name table.
# ---------------------------------------------------------------------------------------------
V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
CPU0 = struct.pack("<ii", 1, 0)  # context: dev_type 1 (cpu), dev_id 0
FLAGS = {"float32": 0, "float64": 1, "float16": 2, "uint8": 3, "int32": 4, "int8": 5, "int64": 6, "bool": 7}


def legacy_record(arr: np.ndarray) -> bytes:
    # Shape32 whose u32 ndim doubles as the record's first word, then context, flag, data.
    return (
        struct.pack(f"<I{arr.ndim}I", arr.ndim, *arr.shape)
        + CPU0
        + struct.pack("<i", FLAGS[arr.dtype.name])
        + arr.tobytes()
    )


def v1_record(arr: np.ndarray) -> bytes:
    return (
        struct.pack(f"<II{arr.ndim}q", V1, arr.ndim, *arr.shape)
        + CPU0
        + struct.pack("<i", FLAGS[arr.dtype.name])
        + arr.tobytes()
    )


def v2_record(arr: np.ndarray, magic: int = V2) -> bytes:
    head = struct.pack(f"<Iii{arr.ndim}q", magic, 0, arr.ndim, *arr.shape)  # stype 0 = dense
    return head + CPU0 + struct.pack("<i", FLAGS[arr.dtype.name]) + arr.tobytes()


def params_file(records: list[bytes], names: list[str] | None = None) -> bytes:
    out = struct.pack("<QQQ", 0x112, 0, len(records)) + b"".join(records)
    encoded = [] if names is None else [name.encode() for name in names]
    return out + struct.pack("<Q", len(encoded)) + b"".join(struct.pack("<Q", len(raw)) + raw for raw in encoded)


def write(tmp_path: Path, data: bytes, name: str = "x.params") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def patched(tmp_path: Path, fixture: str, offset: int, fmt: str, value: int) -> Path:
    data = bytearray((DATA / f"{fixture}.params").read_bytes())
    struct.pack_into(fmt, data, offset, value)
    return write(tmp_path, bytes(data), f"{fixture}_patched.params")


def bits(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).tobytes()


# ---------------------------------------------------------------------------------------------
# MXNet-written fixtures
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_reads_bit_exact(fixture: str) -> None:
    loaded = load(DATA / f"{fixture}.params")
    with np.load(DATA / f"{fixture}.npz", allow_pickle=False) as expected_npz:
        expected = {key: expected_npz[key] for key in expected_npz.files}
    if fixture in NAMED:
        assert isinstance(loaded, dict)
        assert list(loaded) == list(expected)  # names exactly as stored, in file order
    else:
        assert isinstance(loaded, list)
        loaded = {f"arr_{i}": arr for i, arr in enumerate(loaded)}
        assert list(loaded) == list(expected)
    for key, want in expected.items():
        if fixture == "dtypes_bool_bf16" and key == "arg:bfloat16":
            want = (want.astype(np.uint32) << 16).view(np.float32)  # npz keeps raw bf16 bits
        got = loaded[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert bits(got) == bits(want), key  # bitwise: nan, -0.0, inf, subnormals


def test_special_float_values_survive() -> None:
    arrays = load(DATA / "dtypes.params")
    f32 = arrays["arg:float32"]
    assert np.signbit(f32[0, 1]) and f32[0, 1] == 0  # -0.0
    assert f32[1, 1].view(np.uint32) == 1  # smallest float32 subnormal, 1.4e-45
    assert np.isposinf(f32[1, 2]) and np.isnan(f32[1, 3])
    assert arrays["arg:float64"][3].view(np.uint64) == 1  # 5e-324, smallest float64 subnormal
    assert arrays["aux:int64"][0] == -(2**63) and arrays["aux:int64"][-1] == 2**63 - 1
    assert arrays["arg:int32"].tolist() == [[-(2**31), -1, 0], [1, 123456789, 2**31 - 1]]


def test_bool_and_bfloat16_values() -> None:
    arrays = load(DATA / "dtypes_bool_bf16.params")
    assert arrays["arg:bool"].dtype == np.bool_
    assert arrays["arg:bool"].tolist() == [[True, False, True], [False, False, True]]
    bf16 = arrays["arg:bfloat16"]
    assert bf16.dtype == np.float32
    # Raw bits 0x3FC0 0xC010 0x3C00 0x4380 0x8000 0x4049 are the top halves of these float32s:
    assert bf16.tolist() == [1.5, -2.25, 2.0**-7, 256.0, 0.0, 3.140625]
    assert np.signbit(bf16[4])  # 0x8000 is -0.0


def test_unnamed_list_values() -> None:
    arrays = load(DATA / "unnamed_list.params")
    assert [a.dtype.name for a in arrays] == ["float32", "int32", "float64"]
    assert arrays[0].tolist() == [[0, 1, 2], [3, 4, 5]]  # worked example of docs/formats.md#mxnet-params
    assert arrays[1].tolist() == [10, 20, 30, 40]
    assert arrays[2].ravel().tolist() == [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]


def test_v3_scalar_and_zero_size() -> None:
    arrays = load(DATA / "npx_v3.params")
    assert arrays["arg:scalar"].shape == () and arrays["arg:scalar"] == 7.5
    assert arrays["arg:empty"].shape == (0, 3) and arrays["arg:empty"].dtype == np.float32
    assert arrays["aux:i64"].tolist() == [-3, 0, 3, 2**40]


def test_edge_case_names_and_contexts() -> None:
    arrays = load(DATA / "edge_cases_v2.params")
    # contexts cpu(3), cpu_pinned(0), cpu_shared(0) are ignored; names may be empty or non-ASCII
    assert list(arrays) == ["arg:ctx_cpu3", "arg:ctx_cpu_pinned", "arg:ctx_cpu_shared", "aux:größe_ü", "", "arg:six_d"]
    raw = (DATA / "edge_cases_v2.params").read_bytes()
    name_at = raw.index("aux:größe_ü".encode())
    assert struct.unpack_from("<Q", raw, name_at - 8)[0] == 14  # 11 characters, 14 UTF-8 bytes stored
    assert arrays["arg:ctx_cpu_shared"].tolist() == [5.0, 6.0]
    assert np.array_equal(arrays["arg:six_d"], np.arange(64, dtype=np.float32).reshape((2,) * 6))


# sparse_v2 byte layout (docs/formats.md#array-record), record 0 (row_sparse) starts at byte 24:
# magic 4 + stype 4 + storage Shape64 (2, 3) 20 + Shape64 (4, 3) 20 + context 8 + flag 4
# + aux flag 4 + aux Shape64 (2,) 12 + 6 float32 values 24 + 2 int64 row indices 16 = 116 bytes,
# so record 1 (csr) starts at byte 140.
ROW_SPARSE_STORAGE_DIM0 = 24 + 4 + 4 + 4  # = 36
ROW_SPARSE_INDICES = 24 + 116 - 16  # = 124
CSR_STORAGE_DIM0 = 140 + 4 + 4 + 4  # = 152
SPARSE_DENSE = [[0, 0, 0], [1, 2, 0], [0, 0, 0], [0, 3, 4]]  # row_sparse rows [1, 3]; csr indptr [0,0,2,2,4]


def test_sparse_is_densified() -> None:
    arrays = load(DATA / "sparse_v2.params")
    for name in ("arg:row_sparse", "arg:csr"):
        assert arrays[name].dtype == np.float32
        assert arrays[name].tolist() == SPARSE_DENSE


@pytest.mark.parametrize("offset", [ROW_SPARSE_STORAGE_DIM0, CSR_STORAGE_DIM0])
def test_sparse_zero_storage_shape_is_recomputed(tmp_path: Path, offset: int) -> None:
    # MXNet 1.9.1 sometimes writes a 0-element storage shape with the values still following.
    path = patched(tmp_path, "sparse_v2", offset, "<q", 0)
    arrays = load(path)
    assert arrays["arg:row_sparse"].tolist() == SPARSE_DENSE
    assert arrays["arg:csr"].tolist() == SPARSE_DENSE


def test_sparse_index_out_of_range(tmp_path: Path) -> None:
    path = patched(tmp_path, "sparse_v2", ROW_SPARSE_INDICES, "<q", 9)  # row 9 of a 4-row array
    with pytest.raises(MXNetParamsError, match="row indices out of range") as info:
        load(path)
    # reported at the record's values: 24 + magic 4 + stype 4 + 20 + 20 + context 8 + flag 4 + aux 16 = 100
    assert info.value.offset == 100


def test_resnet38_subset_matches_name_table() -> None:
    table = {}
    for line in (DATA / "resnet38_a1_names.txt").read_text().splitlines():
        name, dims = line.split("\t")
        table[name] = tuple(int(d) for d in dims.split(","))
    assert len(table) == 193
    assert sum(name.startswith("arg:") for name in table) == 119
    assert sum(name.startswith("aux:") for name in table) == 74
    assert sum(int(np.prod(shape)) for shape in table.values()) == 109_215_656
    arrays = load(DATA / "resnet38_subset.params")
    assert len(arrays) == 17
    for name, arr in arrays.items():
        assert arr.shape == table[name], name
    # Size of the whole model saved in the legacy layout (docs/formats.md#mxnet-params: 436,873,620 B):
    # header 24 + per record (ndim 4 + dims 4 ndim + context 8 + flag 4 + data 4 numel) + K 8 + per name (8 + len).
    records = sum(16 + 4 * len(shape) + 4 * int(np.prod(shape)) for shape in table.values())
    names = sum(8 + len(name.encode()) for name in table)
    assert 24 + records + 8 + names == 436_873_620


# ---------------------------------------------------------------------------------------------
# Memory behaviour: views into a copy-on-write mapping
# ---------------------------------------------------------------------------------------------
def test_arrays_are_writeable_views_and_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "subset.params"
    shutil.copyfile(DATA / "resnet38_subset.params", path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    arrays = load(path)
    weight = arrays["arg:res2a_branch2b1_weight"]  # (128, 128, 3, 3) float32, 589,824 bytes
    assert not weight.flags.owndata  # a view into the mapping, not a copy
    assert weight.flags.writeable
    original = weight[0, 0, 0, 0].item()
    tensor = torch.from_numpy(weight)
    tensor.zero_()
    assert weight[0, 0, 0, 0] == 0  # torch shares the buffer
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # copy-on-write: file unchanged
    assert load(path)["arg:res2a_branch2b1_weight"][0, 0, 0, 0] == original


def test_arrays_outlive_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dense.params"
    shutil.copyfile(DATA / "dense_v2_small.params", path)
    arrays = load(path)
    path.unlink()
    gc.collect()
    with np.load(DATA / "dense_v2_small.npz", allow_pickle=False) as expected:
        for name, arr in arrays.items():
            assert bits(arr) == bits(expected[name])


@pytest.mark.parametrize("fixture", FIXTURES)
def test_torch_from_numpy_works(fixture: str) -> None:
    loaded = load(DATA / f"{fixture}.params")
    for arr in loaded.values() if isinstance(loaded, dict) else loaded:
        tensor = torch.from_numpy(arr)
        assert tuple(tensor.shape) == arr.shape


# ---------------------------------------------------------------------------------------------
# Hand-built legacy, V1, V2 and V3 files
# ---------------------------------------------------------------------------------------------
MAT = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5  # [[-2.5 -1.5 -0.5] [0.5 1.5 2.5]]
CONV = np.arange(4, dtype=np.float32).reshape(1, 2, 1, 2) * 0.25  # 4-d, [0, .25, .5, .75]
VEC = np.array([-(2**31), -1, 0, 2**31 - 1], dtype=np.int32)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape and bits(got) == bits(want)


def test_legacy_unnamed(tmp_path: Path) -> None:
    data = params_file([legacy_record(MAT), legacy_record(CONV), legacy_record(VEC)])
    # header 24 + (4 + 8 + 8 + 4 + 24) + (4 + 16 + 8 + 4 + 16) + (4 + 4 + 8 + 4 + 16) + K 8 = 164 bytes
    assert len(data) == 164
    arrays = load(write(tmp_path, data))
    assert isinstance(arrays, list) and len(arrays) == 3
    for got, want in zip(arrays, [MAT, CONV, VEC], strict=True):
        assert_same(got, want)


def test_legacy_named_and_none_record(tmp_path: Path) -> None:
    # A <= 0.10 none array is a lone ndim 0; the record after it must still line up.
    none_record = struct.pack("<I", 0)
    data = params_file([legacy_record(CONV), none_record, legacy_record(MAT)], ["arg:conv", "arg:none", "aux:mat"])
    arrays = load(write(tmp_path, data))
    assert list(arrays) == ["arg:conv", "arg:none", "aux:mat"]
    assert_same(arrays["arg:conv"], CONV)
    assert arrays["arg:none"] is None
    assert_same(arrays["aux:mat"], MAT)


def test_v1_records(tmp_path: Path) -> None:
    f64 = np.array([0.1, -0.0, np.inf])
    none_record = struct.pack("<II", V1, 0)
    data = params_file([v1_record(MAT), none_record, v1_record(f64)], ["a", "b", "c"])
    # V1 record of MAT: magic 4 + ndim 4 + dims 16 + context 8 + flag 4 + data 24 = 60 bytes
    assert len(v1_record(MAT)) == 60
    arrays = load(write(tmp_path, data))
    assert_same(arrays["a"], MAT)
    assert arrays["b"] is None
    assert_same(arrays["c"], f64)


def test_v2_and_v3_none_records(tmp_path: Path) -> None:
    v2_ndim0 = struct.pack("<Iii", V2, 0, 0)  # pre-1.5 writer: ndim 0 means none
    v2_unknown = struct.pack("<Iii", V2, 0, -1)  # 1.5+ writer: ndim -1 means none
    v3_unknown = struct.pack("<Iii", V3, 0, -1)
    scalar = np.array(7.5, dtype=np.float32)
    records = [v2_ndim0, v2_unknown, v3_unknown, v2_record(scalar, V3), v2_record(VEC)]
    arrays = load(write(tmp_path, params_file(records)))
    assert arrays[:3] == [None, None, None]
    assert_same(arrays[3], scalar)  # V3 ndim 0 is a real 0-d array
    assert_same(arrays[4], VEC)


def test_all_record_versions_in_one_file(tmp_path: Path) -> None:
    data = params_file([legacy_record(MAT), v1_record(CONV), v2_record(VEC), v2_record(MAT, V3)], list("wxyz"))
    arrays = load(write(tmp_path, data))
    for got, want in zip(arrays.values(), [MAT, CONV, VEC, MAT], strict=True):
        assert_same(got, want)


def test_unaligned_data_is_read_correctly(tmp_path: Path) -> None:
    # A 3-byte uint8 record pushes the next float64 record's data off 8-byte alignment.
    odd = np.array([1, 2, 3], dtype=np.uint8)
    f64 = np.array([1.0, -2.0])
    arrays = load(write(tmp_path, params_file([v2_record(odd), v2_record(f64)])))
    assert_same(arrays[1], f64)
    assert arrays[1].flags.aligned


def test_trailing_junk_and_reserved_field_tolerated(tmp_path: Path) -> None:
    data = bytearray(params_file([legacy_record(MAT)], ["m"]) + b"junk after the names")
    struct.pack_into("<Q", data, 8, 0xDEADBEEF)  # reserved header field: MXNet ignores it
    arrays = load(write(tmp_path, bytes(data)))
    assert_same(arrays["m"], MAT)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["dense_v2_small", "sparse_v2", "npx_v3", "dtypes_bool_bf16", "edge_cases_v2"])
def test_every_truncation_is_reported(tmp_path: Path, fixture: str) -> None:
    data = (DATA / f"{fixture}.params").read_bytes()
    path = tmp_path / f"{fixture}.params"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        with pytest.raises(MXNetParamsError) as info:
            load(path)
        assert str(path) in str(info.value)
        assert "byte offset" in str(info.value)
        assert 0 <= info.value.offset <= length


def test_truncated_inside_data_names_offset_and_need(tmp_path: Path) -> None:
    # unnamed_list record 0 (worked example of docs/formats.md#mxnet-params): magic 24, stype 28, ndim 32, dims 36-51,
    # context 52-59, flag 60, data 64-87 (6 float32 = 24 bytes).
    data = (DATA / "unnamed_list.params").read_bytes()
    path = write(tmp_path, data[:70])
    with pytest.raises(MXNetParamsError, match=r"expected 24 bytes.*only 6 remain") as info:
        load(path)
    assert info.value.offset == 64
    assert str(info.value).startswith(f"{path}: at byte offset 64:")
    with pytest.raises(MXNetParamsError, match="the reserved header field") as info:
        load(write(tmp_path, data[:10]))
    assert info.value.offset == 8


def test_wrong_magic(tmp_path: Path) -> None:
    npz = DATA / "unnamed_list.npz"  # a zip archive, not an NDArray list
    with pytest.raises(MXNetParamsError, match="expected the NDArray-list magic 0x112") as info:
        load(npz)
    assert info.value.offset == 0 and str(npz) in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(MXNetParamsError, match="empty file"):
        load(write(tmp_path, b""))


@pytest.mark.parametrize("flag", [8, 9, 11, 13, -1, 99])
def test_unknown_dtype_flag(tmp_path: Path, flag: int) -> None:
    path = patched(tmp_path, "unnamed_list", 60, "<i", flag)  # record 0's dtype flag
    with pytest.raises(MXNetParamsError, match=f"dtype flag {flag} is unknown") as info:
        load(path)
    assert info.value.offset == 60


def test_bad_name_count(tmp_path: Path) -> None:
    path = patched(tmp_path, "unnamed_list", 256 - 8, "<Q", 2)  # K sits in the last 8 bytes; N = 3
    with pytest.raises(MXNetParamsError, match=r"bad name count 2, expected 0 \(list\) or 3") as info:
        load(path)
    assert info.value.offset == 248


def test_unknown_storage_type(tmp_path: Path) -> None:
    path = patched(tmp_path, "unnamed_list", 28, "<i", 3)
    with pytest.raises(MXNetParamsError, match="unknown storage type 3") as info:
        load(path)
    assert info.value.offset == 28


def test_sparse_v3_rejected(tmp_path: Path) -> None:
    path = patched(tmp_path, "sparse_v2", 24, "<I", V3)  # row_sparse record relabelled as V3
    with pytest.raises(MXNetParamsError, match="V3 record with storage type 1") as info:
        load(path)
    assert info.value.offset == 28


def test_absurd_ndim(tmp_path: Path) -> None:
    with pytest.raises(MXNetParamsError, match="legacy ndim") as info:
        load(patched(tmp_path, "unnamed_list", 24, "<I", 33))  # neither a magic nor a sane ndim
    assert info.value.offset == 24
    with pytest.raises(MXNetParamsError, match="ndim 1000 is absurd") as info:
        load(patched(tmp_path, "unnamed_list", 32, "<i", 1000))
    assert info.value.offset == 32


def test_negative_dim(tmp_path: Path) -> None:
    with pytest.raises(MXNetParamsError, match="dimension 1 is -3") as info:
        load(patched(tmp_path, "unnamed_list", 44, "<q", -3))  # second dim of record 0
    assert info.value.offset == 36


def test_dims_exceeding_file_size(tmp_path: Path) -> None:
    path = patched(tmp_path, "unnamed_list", 36, "<q", 2**40)  # (2**40, 3) float32
    with pytest.raises(MXNetParamsError, match=f"expected {2**40 * 3 * 4} bytes") as info:
        load(path)
    assert info.value.offset == 64


def test_absurd_array_count(tmp_path: Path) -> None:
    path = patched(tmp_path, "unnamed_list", 16, "<Q", 2**62)
    with pytest.raises(MXNetParamsError, match="array count") as info:
        load(path)
    assert info.value.offset == 16


def test_bad_names(tmp_path: Path) -> None:
    duplicate = params_file([legacy_record(MAT), legacy_record(VEC)], ["same", "same"])
    with pytest.raises(MXNetParamsError, match="duplicate name 'same'"):
        load(write(tmp_path, duplicate))
    latin1 = bytearray(params_file([legacy_record(MAT)], ["größe"]))
    latin1[-len("größe".encode()) :] = "größe".encode("latin-1").ljust(len("größe".encode()), b"_")
    with pytest.raises(MXNetParamsError, match="not valid UTF-8"):
        load(write(tmp_path, bytes(latin1)))
