"""Packed bundles: one small file that unpacks BIT-EXACTLY into the bundle directory.

An 80%-pruned model is mostly zeros, but a model file stores them densely, and a general-purpose
compressor spends bits on every zero. Packing cuts each large tensor out of its model file and
stores it as a bit mask of its non-zero elements plus the non-zero elements only; everything else
of the file (graph structure, names, small tensors: the "skeleton") is stored as it is. Each part
is compressed. ``unpack`` splices the tensors back into the skeleton, so the model file it writes
is byte for byte the one that was packed; the sha256 of every file is checked.

Container (all integers little-endian)::

    b"EKPACK1\\n"  u32 header_length  header (UTF-8 JSON)  payload

``header["streams"]``: ``{"codec": "zlib"|"xz", "offset", "length", "raw_bytes"}``, offsets into
the payload. ``header["files"]``: ``{"name", "bytes", "sha256", "encoding": "whole", "stream"}``
(the file is the decompressed stream) or ``{"encoding": "sparse", "segments": [[offset, length,
itemsize], ...], "streams": {"skeleton", "masks", "values<itemsize>"...}}`` where

- ``skeleton`` is the file with every segment's bytes removed;
- ``masks`` holds, per segment in order, one bit per element (``length / itemsize`` elements;
  an element is non-zero if any of its bytes is), most significant bit first, each segment's
  mask padded to a whole byte;
- ``values<s>`` holds the non-zero elements of all segments of item size ``s`` in order; for
  ``s > 1`` as byte planes (all first bytes, then all second bytes...), which compresses better.

ONNX files are segmented at their initializers' ``raw_data``; other files are stored whole
unless a segment finder is registered for their suffix (``register_segment_finder``).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

from .errors import BundleError

MAGIC = b"EKPACK1\n"
FORMAT = "edgekit-pack"
VERSION = 1
MIN_SEGMENT_BYTES = 1024
CODECS = ("xz", "zlib")

# ---------------------------------------------------------------------------------------------
# Finding tensors in model files


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int):
    """Protobuf wire-format fields of buf[start:end]: (number, wire_type, value, value_start, value_end)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, None, None
        elif wire == 1:
            yield number, wire, None, pos, pos + 8
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, wire, None, pos, pos + length
            pos += length
        elif wire == 5:
            yield number, wire, None, pos, pos + 4
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


# onnx.TensorProto.DataType -> bytes per element
_ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def onnx_tensor_segments(data: bytes, min_bytes: int = MIN_SEGMENT_BYTES) -> list[tuple[int, int, int]]:
    """(offset, length, itemsize) of the ``raw_data`` of each large initializer of an ONNX model.

    ModelProto.graph is field 7, GraphProto.initializer field 5, TensorProto.data_type field 2 and
    TensorProto.raw_data field 9."""
    segments = []
    for number, wire, _, gs, ge in _fields(data, 0, len(data)):
        if number != 7 or wire != 2:
            continue
        for gnum, gwire, _, ts, te in _fields(data, gs, ge):
            if gnum != 5 or gwire != 2:
                continue
            dtype, raw = None, None
            for tnum, twire, value, vs, ve in _fields(data, ts, te):
                if tnum == 2 and twire == 0:
                    dtype = value
                elif tnum == 9 and twire == 2:
                    raw = (vs, ve)
            itemsize = _ONNX_ITEMSIZE.get(dtype)
            if raw and itemsize and raw[1] - raw[0] >= min_bytes and (raw[1] - raw[0]) % itemsize == 0:
                segments.append((raw[0], raw[1] - raw[0], itemsize))
    return sorted(segments)


_SEGMENT_FINDERS = {".onnx": onnx_tensor_segments}


def register_segment_finder(suffix: str, finder) -> None:
    """Pack files ending in ``suffix`` sparsely: ``finder(data: bytes) -> [(offset, length, itemsize)]``
    gives the byte ranges of their large tensors (e.g. the TFLite backend's flatbuffer buffers)."""
    _SEGMENT_FINDERS[suffix] = finder


# ---------------------------------------------------------------------------------------------
# Streams


def _compress(data: bytes, codec: str) -> bytes:
    if codec == "zlib":
        return zlib.compress(data, 9)
    if codec == "xz":
        # A dictionary no larger than the data keeps the decoder's memory small on phones.
        dict_size = max(1 << 16, min(1 << 26, 1 << max(len(data) - 1, 1).bit_length()))
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                                       "dict_size": dict_size}])
    raise ValueError(f"unknown codec {codec!r}; use one of {CODECS}")


def _decompress(data: bytes, codec: str) -> bytes:
    if codec == "zlib":
        return zlib.decompress(data)
    if codec == "xz":
        return lzma.decompress(data, format=lzma.FORMAT_XZ)
    raise BundleError(f"packed bundle uses codec {codec!r}, which this runtime does not know; update edgekit_device.")


def _sparse_parts(data: bytes, segments) -> tuple[bytes, bytes, dict[int, bytes]]:
    import numpy as np

    skeleton, masks, values = bytearray(), bytearray(), {}
    cursor = 0
    for offset, length, itemsize in segments:
        skeleton += data[cursor:offset]
        elements = np.frombuffer(data, dtype=np.uint8, count=length, offset=offset).reshape(-1, itemsize)
        nonzero = elements.any(axis=1)
        masks += np.packbits(nonzero).tobytes()
        values.setdefault(itemsize, []).append(elements[nonzero])
        cursor = offset + length
    skeleton += data[cursor:]
    planes = {size: np.concatenate(parts).T.tobytes() for size, parts in values.items()}
    return bytes(skeleton), bytes(masks), planes


def _sparse_join(skeleton: bytes, masks: bytes, planes: dict[int, bytes], segments, total: int) -> bytes:
    import numpy as np

    values = {size: np.frombuffer(raw, dtype=np.uint8).reshape(size, -1).T for size, raw in planes.items()}
    used = {size: 0 for size in values}
    out = bytearray()
    sk = mk = 0
    for offset, length, itemsize in segments:
        take = offset - len(out)
        out += skeleton[sk:sk + take]
        sk += take
        count = length // itemsize
        nbytes = (count + 7) // 8
        nonzero = np.unpackbits(np.frombuffer(masks, dtype=np.uint8, count=nbytes, offset=mk))[:count].astype(bool)
        mk += nbytes
        k = int(nonzero.sum())
        elements = np.zeros((count, itemsize), dtype=np.uint8)
        elements[nonzero] = values[itemsize][used[itemsize]:used[itemsize] + k]
        used[itemsize] += k
        out += elements.tobytes()
    out += skeleton[sk:]
    if len(out) != total:
        raise BundleError(f"packed file rebuilds to {len(out)} bytes instead of {total}; the pack is corrupted.")
    return bytes(out)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Public API


def pack(bundle_dir, out_file, codec: str = "xz") -> dict:
    """Pack every file of ``bundle_dir`` into ``out_file``; returns sizes (dense, packed, per file).

    The pack is verified by unpacking it in memory before it is written."""
    bundle_dir, out_file = Path(bundle_dir), Path(out_file)
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; use one of {CODECS}")
    files, streams, payload = [], [], bytearray()

    def add_stream(raw: bytes) -> int:
        blob = _compress(raw, codec)
        streams.append({"codec": codec, "offset": len(payload), "length": len(blob), "raw_bytes": len(raw)})
        payload.extend(blob)
        return len(streams) - 1

    report = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        name = path.relative_to(bundle_dir).as_posix()
        data = path.read_bytes()
        entry = {"name": name, "bytes": len(data), "sha256": _sha256(data)}
        finder = _SEGMENT_FINDERS.get(path.suffix)
        segments = finder(data) if finder else []
        if segments:
            skeleton, masks, planes = _sparse_parts(data, segments)
            entry.update(encoding="sparse", segments=[list(s) for s in segments],
                         streams={"skeleton": add_stream(skeleton), "masks": add_stream(masks),
                                  **{f"values{size}": add_stream(raw) for size, raw in sorted(planes.items())}})
            parts = {part: streams[index]["length"] for part, index in entry["streams"].items()}
        else:
            entry.update(encoding="whole", stream=add_stream(data))
            parts = {"whole": streams[entry["stream"]]["length"]}
        files.append(entry)
        report[name] = {"bytes": len(data), "packed_bytes": sum(parts.values()), "parts": parts}

    header = json.dumps({"format": FORMAT, "version": VERSION, "files": files, "streams": streams},
                        separators=(",", ":")).encode("utf-8")
    blob = MAGIC + struct.pack("<I", len(header)) + header + bytes(payload)
    for entry in files:  # the bit-exactness promise, checked before anything is written
        if _sha256(_read_file(entry, streams, bytes(payload))) != entry["sha256"]:
            raise AssertionError(f"packing {entry['name']} does not round-trip; this is a bug")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp-{os.getpid()}")
    tmp.write_bytes(blob)
    os.replace(tmp, out_file)
    return {"dense_bytes": sum(f["bytes"] for f in files), "packed_bytes": len(blob), "header_bytes": len(header),
            "codec": codec, "files": report}


def _parse(blob: bytes) -> tuple[dict, bytes]:
    if blob[:len(MAGIC)] != MAGIC:
        raise BundleError("the file is not a packed edgekit bundle (wrong magic bytes); pass a file written by `edgekit export --pack`.")
    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(blob[start:start + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError("the packed bundle's header is corrupted; download it again.") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise BundleError(f"packed bundle version {header.get('version')!r} is not supported by this runtime "
                          f"(reads version {VERSION}); update edgekit_device.")
    return header, blob[start + size:]


def _read_file(entry: dict, streams: list[dict], payload: bytes) -> bytes:
    """The bytes of one packed file."""

    def stream(index: int) -> bytes:
        s = streams[index]
        try:
            return _decompress(payload[s["offset"]:s["offset"] + s["length"]], s["codec"])
        except (zlib.error, lzma.LZMAError):
            raise BundleError(f"packed data of '{entry['name']}' is corrupted; download the bundle again.") from None

    if entry["encoding"] == "whole":
        return stream(entry["stream"])
    if entry["encoding"] == "sparse":
        names = entry["streams"]
        planes = {int(k[len("values"):]): stream(v) for k, v in names.items() if k.startswith("values")}
        return _sparse_join(stream(names["skeleton"]), stream(names["masks"]), planes,
                            [tuple(s) for s in entry["segments"]], entry["bytes"])
    raise BundleError(f"packed file '{entry['name']}' has unknown encoding {entry['encoding']!r}; update edgekit_device.")



def unpack(pack_file, out_dir) -> Path:
    """Restore the bundle directory packed in ``pack_file`` into ``out_dir`` (replaced if it exists).

    Every file is checked against its sha256; a mismatch raises ``BundleError`` naming the file and
    leaves ``out_dir`` untouched."""
    pack_file, out_dir = Path(pack_file), Path(out_dir)
    try:
        blob = pack_file.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read the packed bundle '{pack_file}' ({e.strerror or e}).") from None
    header, payload = _parse(blob)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the bundle directory gets mkdir's mode
    try:
        for entry in header["files"]:
            name = entry["name"]
            target = (tmp / name).resolve()
            if tmp.resolve() not in target.parents:
                raise BundleError(f"packed bundle names a file outside the bundle ('{name}'); refusing to unpack it.")
            data = _read_file(entry, header["streams"], payload)
            if _sha256(data) != entry["sha256"]:
                raise BundleError(f"unpacked '{name}' does not match its sha256; the pack is corrupted, download it again.")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
