"""A .caffemodel writer for the tests, byte by byte from the protobuf wire format (docs/formats.md#caffemodel).

Written independently of ``tool.caffemodel`` (which only reads), so a test that
round-trips through both checks the reader against the format, not against itself.
"""

from __future__ import annotations

import struct

import numpy as np
import torch


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def length_delimited(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def blob(values: np.ndarray, *, layout: str = "shape", packed: bool = True, double: bool = False) -> bytes:
    """A BlobProto: shape as ``shape`` (7) or legacy num/channels/height/width (1-4); float ``data`` (5)
    or ``double_data`` (8), packed or one value per field."""
    out = b""
    if layout == "shape":
        dims = b"".join(key(1, 0) + varint(d) for d in values.shape)  # unpacked dims
        out += length_delimited(7, dims)
    else:
        legacy = (1,) * (4 - values.ndim) + values.shape  # e.g. a bias as 1 x 1 x 1 x N
        out += b"".join(key(f, 0) + varint(d) for f, d in zip((1, 2, 3, 4), legacy, strict=True))
    field, fmt, wire = (8, "<d", 1) if double else (5, "<f", 5)
    flat = values.reshape(-1).astype(np.float64 if double else np.float32)
    if packed:
        out += length_delimited(field, b"".join(struct.pack(fmt, v) for v in flat))
    else:
        out += b"".join(key(field, wire) + struct.pack(fmt, v) for v in flat)
    return out


def layer(name: str, blobs: list[bytes], *, v1: bool = False, type_: str = "Convolution") -> bytes:
    """A LayerParameter (NetParameter field 100: name 1, type 2, blobs 7) or a legacy
    V1LayerParameter (field 2: name 4, type 5 as an enum varint, blobs 6)."""
    if v1:
        body = length_delimited(4, name.encode()) + key(5, 0) + varint(4)
        body += b"".join(length_delimited(6, b) for b in blobs)
        return length_delimited(2, body)
    body = length_delimited(1, name.encode()) + length_delimited(2, type_.encode())
    body += b"".join(length_delimited(7, b) for b in blobs)
    return length_delimited(100, body)


def net(layers: list[bytes]) -> bytes:
    return length_delimited(1, b"VGG_ILSVRC_16_layers") + b"".join(layers)


def caffemodel_of(state_dict: dict[str, torch.Tensor], **blob_kwargs) -> bytes:
    """A .caffemodel holding every ``<layer>.weight`` / ``<layer>.bias`` pair, ReLU layers in between."""
    names = dict.fromkeys(k.rsplit(".", 1)[0] for k in state_dict)
    parts = []
    v1 = blob_kwargs.pop("v1", False)
    for name in names:
        blobs = [blob(state_dict[f"{name}.weight"].numpy(), **blob_kwargs)]
        if f"{name}.bias" in state_dict:
            blobs.append(blob(state_dict[f"{name}.bias"].numpy(), **blob_kwargs))
        parts.append(layer(name, blobs, v1=v1))
        parts.append(layer(f"relu_{name}", [], v1=v1, type_="ReLU"))  # no blobs: skipped
    return net(parts)
