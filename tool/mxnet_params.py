"""Pure-NumPy reader of MXNet NDArray-list ``.params`` files (no mxnet import).

docs/method.md#resnet38 initialises ResNet38 from the MXNet file
``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``; ``network/resnet38d.convert_mxnet_to_torch``
builds on :func:`load`. The byte layout is documented in ``docs/formats.md#mxnet-params``
(its subsections are cited by anchor below). Supported:

- every array record version: legacy (MXNet <= 0.10, 32-bit shape, no per-array magic),
  V1 (0.11), V2 (>= 0.12) and V3 (numpy semantics, >= 1.5: 0-d and zero-size arrays);
- dtype flags 0-7 and 12. bfloat16 (flag 12) has no NumPy dtype, so it is returned as
  float32 computed exactly from the raw bits (``bits << 16``);
- row_sparse and csr records, returned densified (a fresh array of the logical shape);
- "none" (empty) records, returned as ``None`` (weight files never contain them);
- device contexts are read and ignored: every array comes back as a host NumPy array.

Memory: the file is mapped copy-on-write (``mmap.ACCESS_COPY``) and dense arrays are
``np.frombuffer`` views into the mapping, so a 437 MB weight file is never copied on load.
The views keep the mapping alive after :func:`load` returns (the file descriptor itself is
closed), and they are writeable: writes land in private pages, never in the file, so
``torch.from_numpy`` works on them without a warning. An array whose data offset is not a
multiple of its item size (records are packed, docs/formats.md#mxnet-params) is copied once so it is aligned.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct

import numpy as np

from tool.cli import InputError

__all__ = ["MXNetParamsError", "load"]

logger = logging.getLogger(__name__)

_FILE_MAGIC = 0x112
_V1_MAGIC = 0xF993FAC8
_V2_MAGIC = 0xF993FAC9
_V3_MAGIC = 0xF993FACA
_RECORD_NAMES = {_V1_MAGIC: "V1", _V2_MAGIC: "V2", _V3_MAGIC: "V3"}

# MXNet's TypeFlag -> little-endian NumPy dtype (docs/formats.md#array-record). Flags 8-11 exist in MXNet's
# enum but have no size there, so MXNet can neither save nor load them.
_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    12: np.dtype("<u2"),  # bfloat16: raw bits, widened to float32 after reading
}
_BFLOAT16_FLAG = 12
_INDEX_FLAGS = (3, 4, 5, 6)  # integer dtypes usable as sparse aux (index) arrays

_DENSE, _ROW_SPARSE, _CSR = 0, 1, 2
_NUM_AUX = {_DENSE: 0, _ROW_SPARSE: 1, _CSR: 2}

# No real MXNet array comes near this; a larger value means we are reading garbage.
_MAX_NDIM = 32


class MXNetParamsError(InputError):
    """A file that is not a readable MXNet NDArray list (truncated, foreign or corrupt).

    ``path`` and ``offset`` (the byte offset where reading went wrong) are attributes too.
    """

    def __init__(self, path: str, offset: int, message: str) -> None:
        super().__init__(f"{path}: at byte offset {offset}: {message}")
        self.path = path
        self.offset = offset


class _Reader:
    """Bounds-checked little-endian cursor over the mapped file."""

    def __init__(self, path: str, buf: mmap.mmap) -> None:
        self.path = path
        self.buf = buf
        self.size = len(buf)
        self.pos = 0

    def error(self, message: str, offset: int | None = None) -> MXNetParamsError:
        return MXNetParamsError(self.path, self.pos if offset is None else offset, message)

    def need(self, nbytes: int, what: str) -> None:
        if nbytes > self.size - self.pos:
            raise self.error(
                f"truncated file: expected {nbytes} bytes for {what}, "
                f"but only {self.size - self.pos} remain (file size {self.size})"
            )

    def scalar(self, fmt: str, what: str) -> int:
        nbytes = struct.calcsize(fmt)
        self.need(nbytes, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += nbytes
        return value

    def dims(self, fmt: str, ndim: int, what: str) -> tuple[int, ...]:
        start = self.pos
        nbytes = ndim * struct.calcsize(fmt)
        self.need(nbytes, what)
        shape = struct.unpack_from(f"<{ndim}{fmt}", self.buf, self.pos)
        self.pos += nbytes
        for axis, dim in enumerate(shape):
            if dim < 0:
                raise self.error(f"{what}: dimension {axis} is {dim}, expected >= 0", start)
        return shape

    def shape64(self, what: str) -> tuple[int, ...] | None:
        """Shape64 (docs/formats.md#array-record): 4-byte ndim + ndim x i64 dims; ``None`` when ndim is -1 (unknown)."""
        start = self.pos
        ndim = self.scalar("<i", f"{what} ndim")
        if ndim == -1:
            return None
        if not 0 <= ndim <= _MAX_NDIM:
            raise self.error(f"{what}: ndim {ndim} is absurd, expected -1..{_MAX_NDIM}", start)
        return self.dims("q", ndim, f"{what} dims")

    def skip(self, nbytes: int, what: str) -> None:
        self.need(nbytes, what)
        self.pos += nbytes

    def dtype_flag(self, what: str, allowed: tuple[int, ...] | None = None) -> int:
        start = self.pos
        flag = self.scalar("<i", what)
        valid = tuple(_DTYPES) if allowed is None else allowed
        if flag not in valid:
            raise self.error(f"{what} {flag} is unknown, expected one of {list(valid)}", start)
        return flag

    def array(self, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        self.need(nbytes, f"{what} data (shape {shape}, {dtype.name})")
        if count == 0:
            arr = np.empty(shape, dtype)
        else:
            arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).reshape(shape)
            if not arr.flags.aligned:
                arr = arr.copy()
        self.pos += nbytes
        return arr


def _widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    # bfloat16 is the top half of a float32, so the conversion is exact (nan payloads included).
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _densify_row_sparse(
    r: _Reader, values: np.ndarray, rows: np.ndarray, shape: tuple[int, ...], what: str, offset: int
) -> np.ndarray:
    if len(shape) == 0 or (rows.size and not (rows.min() >= 0 and rows.max() < shape[0])):
        raise r.error(f"{what}: row_sparse row indices out of range for shape {shape}", offset)
    dense = np.zeros(shape, values.dtype)
    dense[rows] = values
    return dense


def _densify_csr(
    r: _Reader,
    values: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    shape: tuple[int, ...],
    what: str,
    offset: int,
) -> np.ndarray:
    if len(shape) != 2:
        raise r.error(f"{what}: csr array has shape {shape}, expected 2-d", offset)
    n_rows, n_cols = shape
    if indptr.shape != (n_rows + 1,) or indices.shape != values.shape:
        raise r.error(
            f"{what}: csr indptr {indptr.shape} / indices {indices.shape} / values {values.shape} "
            f"do not fit shape {shape}",
            offset,
        )
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise r.error(f"{what}: csr indptr is not a non-decreasing 0..{indices.size} sequence", offset)
    if indices.size and not (indices.min() >= 0 and indices.max() < n_cols):
        raise r.error(f"{what}: csr column indices out of range for shape {shape}", offset)
    row_of_entry = np.repeat(np.arange(n_rows), np.diff(indptr))
    dense = np.zeros(shape, values.dtype)
    dense[row_of_entry, indices] = values
    return dense


def _read_record(r: _Reader, index: int, count: int) -> np.ndarray | None:
    """Read one array record (docs/formats.md#array-record); ``None`` for an empty ("none") array."""
    what = f"array {index} of {count}"
    header = _read_record_header(r, what)
    if header is None:
        return None
    stype, storage_shape, shape = header
    r.skip(8, f"{what} context (dev_type, dev_id)")  # ignored: every array is returned on the host
    flag = r.dtype_flag(f"{what} dtype flag")
    dtype = _DTYPES[flag]
    is_bfloat16 = flag == _BFLOAT16_FLAG

    if stype == _DENSE:
        arr = r.array(dtype, shape, what)
        return _widen_bfloat16(arr) if is_bfloat16 else arr
    return _read_sparse_values(r, what, stype, storage_shape, shape, dtype, is_bfloat16)


def _read_record_header(r: _Reader, what: str) -> tuple[int, tuple | None, tuple] | None:
    """Storage type, storage shape (sparse only) and shape of a record; ``None`` for a none array."""
    start = r.pos
    head = r.scalar("<I", f"{what} record magic or legacy ndim")
    version = _RECORD_NAMES.get(head, "legacy")
    stype = _DENSE
    storage_shape = None

    if version == "legacy":
        # No per-array magic before MXNet 0.11: the first word is the ndim of a Shape32.
        if head > _MAX_NDIM:
            raise r.error(
                f"{what}: found {head:#x}, expected a record magic (0xf993fac8/9/a) or a legacy ndim <= {_MAX_NDIM}",
                start,
            )
        shape = r.dims("I", head, f"{what} shape dims")
        if not shape:
            # The <= 0.10 writer stored a none array as ndim 0 alone (MXNet 1.9.1 would read a 0-d scalar).
            return None
    elif version == "V1":
        ndim_offset = r.pos
        ndim = r.scalar("<I", f"{what} ndim")
        if ndim > _MAX_NDIM:
            raise r.error(f"{what}: ndim {ndim} is absurd, expected <= {_MAX_NDIM}", ndim_offset)
        shape = r.dims("q", ndim, f"{what} shape dims")
        if not shape:
            return None  # the 0.11 writer's none array, as for legacy
    else:
        stype_offset = r.pos
        stype = r.scalar("<i", f"{what} storage type")
        if stype not in _NUM_AUX:
            raise r.error(
                f"{what}: unknown storage type {stype}, expected 0 (dense), 1 (row_sparse) or 2 (csr)", stype_offset
            )
        if version == "V3" and stype != _DENSE:
            raise r.error(f"{what}: V3 record with storage type {stype}, expected 0 (dense)", stype_offset)
        if stype != _DENSE:
            storage_shape = r.shape64(f"{what} storage shape")
        shape = r.shape64(f"{what} shape")
        # Writers before 1.5 mark a none array with ndim 0, later ones with -1 (docs/formats.md#array-record). Only V3
        # gives ndim 0 its numpy meaning, a 0-d scalar.
        if shape is None or (version == "V2" and not shape):
            return None
    return stype, storage_shape, shape


def _read_sparse_values(
    r: _Reader, what: str, stype: int, storage_shape: tuple | None, shape: tuple, dtype, is_bfloat16: bool
) -> np.ndarray:
    """The aux shapes, values and aux arrays of a row_sparse or csr record, densified."""
    aux_specs = []
    for aux in range(_NUM_AUX[stype]):
        aux_dtype = _DTYPES[r.dtype_flag(f"{what} aux {aux} dtype flag", _INDEX_FLAGS)]
        aux_shape_offset = r.pos
        aux_shape = r.shape64(f"{what} aux {aux} shape")
        if aux_shape is None or len(aux_shape) != 1:
            raise r.error(f"{what}: aux {aux} shape {aux_shape}, expected 1-d", aux_shape_offset)
        aux_specs.append((aux_dtype, aux_shape))
    if storage_shape is None or math.prod(storage_shape) == 0:
        # MXNet 1.9.1 may write the storage shape before the values are computed (seen as (0,)
        # with values following), so MXNet's loader, and we, recompute it from the aux shapes.
        if stype == _ROW_SPARSE:
            storage_shape = (aux_specs[0][1][0], *shape[1:])
        else:
            storage_shape = aux_specs[1][1]
    data_offset = r.pos
    values = r.array(dtype, storage_shape, f"{what} values")
    aux_arrays = [
        r.array(aux_dtype, aux_shape, f"{what} aux {i}") for i, (aux_dtype, aux_shape) in enumerate(aux_specs)
    ]
    if is_bfloat16:
        values = _widen_bfloat16(values)
    if stype == _ROW_SPARSE:
        if storage_shape != (aux_arrays[0].size, *shape[1:]):
            raise r.error(
                f"{what}: row_sparse values {storage_shape} do not match {aux_arrays[0].size} rows of {shape}",
                data_offset,
            )
        return _densify_row_sparse(r, values, aux_arrays[0], shape, what, data_offset)
    return _densify_csr(r, values, aux_arrays[0], aux_arrays[1], shape, what, data_offset)


def _read_names(r: _Reader, count: int) -> list[str] | None:
    """Read the name table (docs/formats.md#file-layout); ``None`` when the file was saved as a list."""
    start = r.pos
    n_names = r.scalar("<Q", "the name count")
    if n_names == 0:
        return None
    if n_names != count:
        raise r.error(f"bad name count {n_names}, expected 0 (list) or {count} (one per array)", start)
    names = []
    seen = set()
    for index in range(count):
        length_offset = r.pos
        length = r.scalar("<Q", f"the length of name {index}")
        r.need(length, f"name {index} ({length} bytes)")
        raw = r.buf[r.pos : r.pos + length]
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise r.error(f"name {index} is not valid UTF-8 ({exc.reason})") from None
        if name in seen:
            # MXNet's Python dict would silently keep only the last array of that name.
            raise r.error(f"duplicate name {name!r} (array {index})", length_offset)
        seen.add(name)
        names.append(name)
        r.pos += length
    return names


def load(path: str | os.PathLike) -> dict[str, np.ndarray | None] | list[np.ndarray | None]:
    """Read an MXNet NDArray-list file, as ``mx.nd.load`` would, without MXNet.

    Returns a dict in file order (names exactly as stored, ``arg:``/``aux:`` prefixes
    included) when the file has names, else a list (``mx.nd.save`` of a list). Arrays have
    the stored dtype, except bfloat16 -> float32 (exact) and sparse -> dense; an empty
    ("none") record gives ``None``. Dense arrays are writeable copy-on-write views of the
    mapped file (see the module docstring). Raises :class:`MXNetParamsError` naming the file
    and byte offset if the file is truncated, not an NDArray list, or corrupt. Bytes after
    the name table are ignored, as MXNet does.
    """
    path_str = os.fspath(path)
    with open(path_str, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise MXNetParamsError(path_str, 0, "empty file, expected an MXNet NDArray list")
        # The mapping outlives the descriptor; the arrays' .base keeps it alive.
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    r = _Reader(path_str, buf)

    magic = r.scalar("<Q", "the file magic")
    if magic != _FILE_MAGIC:
        raise r.error(
            f"found {magic:#x}, expected the NDArray-list magic {_FILE_MAGIC:#x}: not an MXNet .params file", 0
        )
    reserved = r.scalar("<Q", "the reserved header field")
    if reserved:
        logger.debug("%s: reserved header field is %#x (MXNet ignores it)", path_str, reserved)
    count_offset = r.pos
    count = r.scalar("<Q", "the array count")
    # The smallest record is a legacy none array: a 4-byte ndim of 0.
    if count * 4 > size - r.pos:
        raise r.error(f"array count {count} cannot fit in the {size - r.pos} bytes that follow", count_offset)

    arrays = [_read_record(r, index, count) for index in range(count)]
    names = _read_names(r, count)
    if r.pos < size:
        logger.debug("%s: ignoring %d trailing bytes after the name table", path_str, size - r.pos)
    if names is None:
        return arrays
    return dict(zip(names, arrays, strict=True))
