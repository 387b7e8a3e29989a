"""Read Caffe ``.caffemodel`` weight files without Caffe or protobuf (docs/formats.md#caffemodel).

A ``.caffemodel`` is one serialised ``NetParameter`` protobuf message. Only the
parts that hold weights are decoded; every other field is skipped by its wire
type, so files written by any Caffe version read the same:

- ``NetParameter.layer`` (field 100, ``LayerParameter``: ``name`` = 1, ``blobs`` = 7)
  and the legacy ``NetParameter.layers`` (field 2, ``V1LayerParameter``:
  ``name`` = 4, ``blobs`` = 6);
- ``BlobProto``: ``data`` (5, float32, packed or one value per field),
  ``double_data`` (8, float64, packed or not), ``shape`` (7, ``BlobShape`` with
  ``dim`` = 1, int64, packed or not) or the legacy ``num``/``channels``/
  ``height``/``width`` (1-4).

Protobuf wire format: every field is a varint key ``field_number << 3 | wire_type``
followed by a varint (type 0), 8 bytes (1), a varint length and that many bytes
(2) or 4 bytes (5). Types 3 and 4 (groups) never occur in Caffe's schema.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from tool.cli import InputError, MissingFileError

# NetParameter
_NET_LAYER, _NET_LAYERS_V1 = 100, 2
# LayerParameter / V1LayerParameter: (name field, blobs field)
_LAYER_FIELDS = {_NET_LAYER: (1, 7), _NET_LAYERS_V1: (4, 6)}
# BlobProto
_BLOB_LEGACY_DIMS = (1, 2, 3, 4)  # num, channels, height, width
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class CaffeModelError(InputError):
    """A file that is not a well-formed ``.caffemodel``; the message names the file and the byte offset."""


class _Reader:
    """Protobuf fields of ``buf[start:end]``; offsets are absolute, for error messages."""

    def __init__(self, buf, path: Path):
        self.buf = buf
        self.path = path

    def error(self, offset: int, what: str) -> CaffeModelError:
        return CaffeModelError(f"{self.path}: byte {offset}: {what}")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result, shift, start = 0, 0, pos
        while True:
            if pos >= end:
                raise self.error(start, "truncated varint (file cut short, or not a .caffemodel)")
            byte = self.buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.error(start, "varint longer than 10 bytes (not a .caffemodel)")

    def fields(self, start: int, end: int):
        """Yield ``(field_number, wire_type, value, offset)``: value is an int for types 0, 1, 5
        (the raw bits) and ``(begin, stop)`` byte offsets for type 2."""
        pos = start
        while pos < end:
            offset = pos
            key, pos = self.varint(pos, end)
            number, wire_type = key >> 3, key & 7
            if number == 0:
                raise self.error(offset, "field number 0 (not a .caffemodel)")
            if wire_type == _VARINT:
                value, pos = self.varint(pos, end)
            elif wire_type in (_FIXED64, _FIXED32):
                size = 8 if wire_type == _FIXED64 else 4
                if pos + size > end:
                    raise self.error(offset, f"field {number}: {size}-byte value runs past the end (file cut short?)")
                value = (pos, pos + size)
                pos += size
            elif wire_type == _LENGTH:
                length, pos = self.varint(pos, end)
                if pos + length > end:
                    raise self.error(
                        offset, f"field {number}: {length} bytes announced, {end - pos} left (file cut short?)"
                    )
                value = (pos, pos + length)
                pos += length
            else:
                raise self.error(offset, f"field {number}: wire type {wire_type} never occurs in a .caffemodel")
            yield number, wire_type, value, offset


def _blob(reader: _Reader, start: int, end: int) -> np.ndarray:
    """One ``BlobProto`` as a float32 array of its shape."""
    buf = reader.buf
    legacy = {}
    shape = None
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for number, wire_type, value, offset in reader.fields(start, end):
        if number in _BLOB_LEGACY_DIMS and wire_type == _VARINT:
            legacy[number] = value
        elif number == _BLOB_DATA and wire_type in (_LENGTH, _FIXED32):
            begin, stop = value
            if (stop - begin) % 4:
                raise reader.error(offset, f"packed float data of {stop - begin} bytes, not a multiple of 4")
            floats.append(np.frombuffer(buf[begin:stop], dtype="<f4"))
        elif number == _BLOB_DOUBLE_DATA and wire_type in (_LENGTH, _FIXED64):
            begin, stop = value
            if (stop - begin) % 8:
                raise reader.error(offset, f"packed double data of {stop - begin} bytes, not a multiple of 8")
            doubles.append(np.frombuffer(buf[begin:stop], dtype="<f8"))
        elif number == _BLOB_SHAPE and wire_type == _LENGTH:
            shape = []
            for dim_number, dim_type, dim_value, dim_offset in reader.fields(*value):
                if dim_number != _SHAPE_DIM:
                    continue
                if dim_type == _VARINT:
                    shape.append(dim_value)
                elif dim_type == _LENGTH:  # packed dims
                    pos, stop = dim_value
                    while pos < stop:
                        dim, pos = reader.varint(pos, stop)
                        shape.append(dim)
                else:
                    raise reader.error(dim_offset, f"BlobShape.dim has wire type {dim_type}")
    if floats and doubles:
        raise reader.error(start, "blob has both float data and double_data")
    data = np.concatenate(floats or doubles) if (floats or doubles) else np.zeros(0, np.float32)
    if shape is None:
        # Legacy 4-d shape; absent dimensions default to 1 in Caffe's schema.
        shape = [legacy.get(n, 1) for n in _BLOB_LEGACY_DIMS] if legacy else [data.size]
    needed = math.prod(shape)  # Python ints: a foreign file's huge dims must not overflow int64
    if needed != data.size:
        raise reader.error(start, f"blob shape {tuple(shape)} needs {needed} values, it holds {data.size}")
    return data.astype(np.float32).reshape(shape)


def _layer(reader: _Reader, start: int, end: int, name_field: int, blobs_field: int) -> tuple[str | None, list]:
    name = None
    blobs = []
    for number, wire_type, value, offset in reader.fields(start, end):
        if number == name_field and wire_type == _LENGTH:
            try:
                name = bytes(reader.buf[value[0] : value[1]]).decode("utf-8")
            except UnicodeDecodeError:
                raise reader.error(offset, "layer name is not UTF-8 (not a .caffemodel)") from None
        elif number == blobs_field and wire_type == _LENGTH:
            blobs.append(_blob(reader, *value))
    return name, blobs


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """``{layer name: [blob arrays, float32]}`` of every layer with blobs, in file order.

    Both layer layouts (``layer`` and the legacy ``layers``) are read; layers
    without blobs (ReLU, pooling, data) are skipped. Raises :class:`CaffeModelError`
    naming the file and byte offset for a truncated or foreign file, and when
    the file holds no layer with blobs.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"caffemodel not found: {path}")
    buf = memoryview(path.read_bytes())  # slices of a memoryview are views: no copy per blob
    size = len(buf)
    if size == 0:
        raise CaffeModelError(f"{path}: byte 0: empty file")
    layers = _read_net(_Reader(buf, path), size)
    if not layers:
        raise CaffeModelError(f"{path}: byte {size}: no layer with blobs found (not a .caffemodel?)")
    return layers


def _read_net(reader: _Reader, size: int) -> dict[str, list[np.ndarray]]:
    layers: dict[str, list[np.ndarray]] = {}
    for number, wire_type, value, offset in reader.fields(0, size):
        if number not in _LAYER_FIELDS or wire_type != _LENGTH:
            continue
        name, blobs = _layer(reader, *value, *_LAYER_FIELDS[number])
        if not blobs:
            continue
        if name is None:
            raise reader.error(offset, "a layer with blobs has no name")
        if name in layers:
            raise reader.error(offset, f"layer {name!r} appears twice")
        layers[name] = blobs
    return layers
