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

ONNX files are segmented at their initializers' ``raw_data``, TFLite files at their buffers'
``data`` (``tflite_tensor_segments``: the flatbuffer read by hand, item size from the tensor
type); other files are stored whole unless a segment finder is registered for their suffix
(``register_segment_finder``). Which bytes are segments is recorded in the header, so a decoder
needs no knowledge of either model format.
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


# tflite.TensorType -> bytes per element (INT4 is packed two to a byte: item size 1)
_TFLITE_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4, 16: 2,
                    17: 1, 18: 2}


def _fb_field(buf: bytes, table: int, index: int) -> int | None:
    """Position of field ``index`` of the flatbuffer table at ``table``, None when absent (default).

    A table starts with an i32 ``soffset``; its vtable is at ``table - soffset``: u16 vtable size,
    u16 table size, then one u16 offset (from ``table``) per field, 0 for a field left out."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    (vsize,) = struct.unpack_from("<H", buf, vtable)
    slot = 4 + 2 * index
    if slot + 2 > vsize:
        return None
    (offset,) = struct.unpack_from("<H", buf, vtable + slot)
    return table + offset if offset else None


def _fb_vector(buf: bytes, table: int, index: int) -> tuple[int, int]:
    """(start, length) of the vector in field ``index``; (0, 0) when absent. A vector field holds a
    u32 offset (from the field) to a u32 length followed by the elements."""
    pos = _fb_field(buf, table, index)
    if pos is None:
        return 0, 0
    vec = pos + struct.unpack_from("<I", buf, pos)[0]
    return vec + 4, struct.unpack_from("<I", buf, vec)[0]


def _fb_tables(buf: bytes, table: int, index: int):
    """The tables of the vector of tables in field ``index`` (each element a u32 offset from itself)."""
    start, count = _fb_vector(buf, table, index)
    for i in range(count):
        pos = start + 4 * i
        yield pos + struct.unpack_from("<I", buf, pos)[0]


def tflite_tensor_segments(data: bytes, min_bytes: int = MIN_SEGMENT_BYTES) -> list[tuple[int, int, int]]:
    """(offset, length, itemsize) of each large weight buffer of a TFLite flatbuffer.

    Read by hand from the schema (tensorflow/lite/schema/schema.fbs), so the runtime needs no
    flatbuffer package: the file starts with a u32 offset to the ``Model`` table; Model.subgraphs
    is field 2 and Model.buffers field 4; SubGraph.tensors field 0; Tensor.type (i8, default
    FLOAT32) field 1 and Tensor.buffer (u32) field 2, which gives the item size; Buffer.data
    ([ubyte]) field 0, or Buffer.offset / Buffer.size (u64, fields 1 and 2, from the file's start)
    for models that keep buffers after the flatbuffer. Per-channel quantization parameters are
    segments too (Tensor.quantization field 4 -> QuantizationParameters.scale [float] field 2 and
    zero_point [long] field 3): a per-row int8 embedding table has one scale and one (zero) zero
    point per row, 12 bytes a row that compress better as byte planes and bit masks. A file this
    cannot read, or whose ranges overlap, yields no segments (it is then stored whole)."""
    try:
        root = struct.unpack_from("<I", data, 0)[0]
        itemsizes: dict[int, int] = {}
        vectors: set[tuple[int, int, int]] = set()  # a set: tensors may share one vector
        for graph in _fb_tables(data, root, 2):
            for tensor in _fb_tables(data, graph, 0):
                type_pos, buffer_pos = _fb_field(data, tensor, 1), _fb_field(data, tensor, 2)
                if buffer_pos is None:
                    continue
                kind = struct.unpack_from("<b", data, type_pos)[0] if type_pos is not None else 0
                buffer = struct.unpack_from("<I", data, buffer_pos)[0]
                itemsizes.setdefault(buffer, _TFLITE_ITEMSIZE.get(kind, 1))
                quantization = _fb_field(data, tensor, 4)
                if quantization is not None:
                    params = quantization + struct.unpack_from("<I", data, quantization)[0]
                    for field, itemsize in ((2, 4), (3, 8)):
                        start, count = _fb_vector(data, params, field)
                        if count * itemsize >= min_bytes:
                            vectors.add((start, count * itemsize, itemsize))
        segments = list(vectors)
        for index, buffer in enumerate(_fb_tables(data, root, 4)):
            start, length = _fb_vector(data, buffer, 0)
            if not length:
                offset_pos, size_pos = _fb_field(data, buffer, 1), _fb_field(data, buffer, 2)
                if offset_pos is None or size_pos is None:
                    continue
                start = struct.unpack_from("<Q", data, offset_pos)[0]
                length = struct.unpack_from("<Q", data, size_pos)[0]
                if start <= 1:  # 1 marks an empty buffer in the offset form
                    continue
            itemsize = itemsizes.get(index, 1)
            if length % itemsize:
                itemsize = 1
            if length >= min_bytes:
                segments.append((start, length, itemsize))
    except (struct.error, IndexError, OverflowError):
        return []
    segments.sort()
    kept, end = [], 0
    for seg in segments:  # ranges never overlap in a valid file; a file where they do is kept whole
        if seg[0] < end or seg[0] + seg[1] > len(data):
            return []
        kept.append(seg)
        end = seg[0] + seg[1]
    return kept


_SEGMENT_FINDERS = {".onnx": onnx_tensor_segments, ".tflite": tflite_tensor_segments}


def register_segment_finder(suffix: str, finder) -> None:
    """Pack files ending in ``suffix`` sparsely: ``finder(data: bytes) -> [(offset, length, itemsize)]``
    gives the byte ranges of their large tensors (e.g. the TFLite backend's flatbuffer buffers)."""
    _SEGMENT_FINDERS[suffix] = finder


# ---------------------------------------------------------------------------------------------
# Streams


# Deflate's LZ77 pass finds no real matches in bit masks and int8 values but its short matches still
# displace literals and cost more than they save; Huffman coding alone reaches their entropy (an i.i.d.
# 20%-dense mask: 0.73 bits per element instead of 0.77). Any strategy writes a standard zlib stream, so
# the devices' decoders are unaffected.
ZLIB_STRATEGIES = (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY)


def _zlib_smallest(data: bytes) -> bytes:
    """The shortest zlib stream (level 9) over ``ZLIB_STRATEGIES``."""
    best = None
    for strategy in ZLIB_STRATEGIES:
        c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, strategy)
        blob = c.compress(data) + c.flush()
        if best is None or len(blob) < len(best):
            best = blob
    return best


def _compress(data: bytes, codec: str) -> bytes:
    if codec == "zlib":
        return _zlib_smallest(data)
    if codec == "xz":
        # A dictionary no larger than the data keeps the decoder's memory small on phones.
        dict_size = max(1 << 16, min(1 << 26, 1 << max(len(data) - 1, 1).bit_length()))
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                                       "dict_size": dict_size}])
    raise ValueError(f"unknown codec {codec!r}; use one of {CODECS}")


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
        if used[itemsize] + k > len(values[itemsize]):
            raise BundleError("packed file has fewer non-zero values than its masks mark; the pack is corrupted.")
        elements = np.zeros((count, itemsize), dtype=np.uint8)
        elements[nonzero] = values[itemsize][used[itemsize]:used[itemsize] + k]
        used[itemsize] += k
        out += elements.tobytes()
    out += skeleton[sk:]
    if any(used[size] != len(v) for size, v in values.items()):
        raise BundleError("packed file has more non-zero values than its masks mark; the pack is corrupted.")
    if len(out) != total:
        raise BundleError(f"packed file rebuilds to {len(out)} bytes instead of {total}; the pack is corrupted.")
    return bytes(out)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Public API


def check_pack_path(out_file, overwrite: bool) -> None:
    """Refuse to write ``out_file`` over a file that is not a pack (edgekit did not write it), or over
    an earlier pack unless ``overwrite``."""
    out_file = Path(out_file)
    if not out_file.exists() and not out_file.is_symlink():
        return
    try:
        with open(out_file, "rb") as f:
            ours = out_file.is_file() and not out_file.is_symlink() and f.read(len(MAGIC)) == MAGIC
    except OSError:
        ours = False
    if not ours:
        raise BundleError(f"'{out_file}' exists and is not a packed bundle edgekit wrote; move it away or choose "
                          "another bundle name (edgekit never replaces it).")
    if not overwrite:
        raise BundleError(f"'{out_file}' already exists and holds a packed bundle edgekit wrote earlier; pass "
                          "--overwrite to replace it, or choose another bundle name.")


def pack(bundle_dir, out_file, codec: str = "zlib", overwrite: bool = False) -> dict:
    """Pack every file of ``bundle_dir`` into ``out_file``; returns sizes (dense, packed, per file).

    ``codec``: ``zlib`` (default), the one the devices decode without a library (Java's
    ``Inflater``, the browser's ``DecompressionStream``); ``xz`` is hardly smaller (at most ~0.5% on paper-shape bundles) but only this
    Python runtime reads it.

    The pack is verified by unpacking it in memory before it is written. An existing ``out_file``
    is replaced only if it is a pack and ``overwrite`` (``check_pack_path``)."""
    from .outdir import MARKER, claim, is_temp_name

    bundle_dir, out_file = Path(bundle_dir), Path(out_file)
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; use one of {CODECS}")
    check_pack_path(out_file, overwrite)
    files, streams, payload = [], [], bytearray()

    def add_stream(raw: bytes) -> int:
        blob = _compress(raw, codec)
        streams.append({"codec": codec, "offset": len(payload), "length": len(blob), "raw_bytes": len(raw)})
        payload.extend(blob)
        return len(streams) - 1

    report = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        name = path.relative_to(bundle_dir).as_posix()
        if name == MARKER or is_temp_name(path.name):  # edgekit's bookkeeping, not the bundle
            continue
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
    claim(out_file)  # part of the run directory it is written into, if any (what --overwrite replaces)
    tmp = out_file.with_name(f".{out_file.name}.tmp-{os.getpid()}")  # a name outdir.is_temp_name knows
    tmp.write_bytes(blob)
    os.replace(tmp, out_file)
    return {"dense_bytes": sum(f["bytes"] for f in files), "packed_bytes": len(blob), "header_bytes": len(header),
            "codec": codec, "files": report}


# ---------------------------------------------------------------------------------------------
# Reading a pack: everything in the header is untrusted. Every size is checked against the
# others and against the limits before a byte is decompressed, decompression stops at the
# declared size, and any malformed value is one BundleError sentence.

MAX_UNPACKED_BYTES = 2 << 30        # the most bytes ``unpack`` writes from one pack
SMALL_UNPACKED_BYTES = 64 << 20     # below this, any compression ratio is accepted
MAX_EXPANSION = 100                 # above it, at most this many unpacked bytes per packed byte
MAX_HEADER_BYTES = 16 << 20
MAX_FILES = 10_000
_HUGE = 1 << 62
MAX_ITEMSIZE = 16
XZ_MEMLIMIT = 256 << 20             # the decoder's memory; pack writes dictionaries of at most 64 MiB
_CHUNK = 1 << 20


_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, struct.error, OverflowError,
              RecursionError, MemoryError)


def _corrupt(what: str) -> BundleError:
    return BundleError(f"the packed bundle is malformed ({what}); download it again or pack the bundle again.")


def _int(value, what: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise _corrupt(f"{what} is {value!r}")
    return value


def check_name(name) -> str:
    """A file name a pack may hold: a relative POSIX path of plain parts (no ``..``, ``.``, empty
    part, leading ``/``, backslash, drive colon or control character), not edgekit's marker."""
    from .outdir import MARKER

    if not isinstance(name, str) or not 0 < len(name) <= 1024:
        raise _corrupt(f"file name {str(name)[:40]!r}")
    parts = name.split("/")
    bad = (name.startswith("/") or "\\" in name or ":" in name or any(ord(c) < 32 or ord(c) == 127 for c in name)
           or any(p in ("", ".", "..") or len(p) > 255 for p in parts) or name == MARKER)
    if bad:
        shown = repr(name if len(name) <= 80 else name[:77] + "...")  # repr: no control character reaches the terminal
        raise BundleError(f"the packed bundle names a file {shown} outside a plain relative path; refusing to "
                          "unpack it.")
    return name


def _parse(blob: bytes) -> tuple[dict, bytes]:
    if blob[:len(MAGIC)] != MAGIC:
        raise BundleError("the file is not a packed edgekit bundle (wrong magic bytes); pass a file written by `edgekit export --pack`.")
    start = len(MAGIC) + 4
    if len(blob) < start:
        raise _corrupt("the file ends inside its header length")
    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    if size > MAX_HEADER_BYTES or start + size > len(blob):
        raise _corrupt(f"a header of {size:,} bytes in a file of {len(blob):,}")
    try:
        header = json.loads(blob[start:start + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError("the packed bundle's header is corrupted; download it again.") from None
    if not isinstance(header, dict):
        raise BundleError("the packed bundle's header is corrupted; download it again.")
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise BundleError(f"packed bundle version {header.get('version')!r} is not supported by this runtime "
                          f"(reads version {VERSION}); update edgekit_device.")
    return header, blob[start + size:]


def _check_header(header: dict, payload_bytes: int, pack_bytes: int, max_bytes: int) -> None:
    """Every stream inside the payload and used once, every file's sizes consistent with its
    streams, names plain and distinct, the total within the limits."""
    streams, files = header.get("streams"), header.get("files")
    if not isinstance(streams, list) or not isinstance(files, list):
        raise _corrupt("'streams' and 'files' must be lists")
    if len(files) > MAX_FILES:
        raise _corrupt(f"{len(files):,} files, more than a bundle has")
    for i, s in enumerate(streams):
        if not isinstance(s, dict):
            raise _corrupt(f"stream {i} is {s!r}")
        if s.get("codec") not in CODECS:
            raise BundleError(f"packed bundle uses codec {s.get('codec')!r}, which this runtime does not know; "
                              "update edgekit_device.")
        offset = _int(s.get("offset"), f"stream {i} offset", 0, payload_bytes)
        _int(s.get("length"), f"stream {i} length", 0, payload_bytes - offset)
        _int(s.get("raw_bytes"), f"stream {i} raw_bytes", 0, _HUGE)  # bounded through the files that use it
    end = 0
    for s in sorted(streams, key=lambda s: s["offset"]):  # pack writes them back to back, nothing between
        if s["offset"] != end:
            raise _corrupt(f"a gap or overlap at payload byte {end:,}")
        end += s["length"]
    if end != payload_bytes:
        raise _corrupt(f"{payload_bytes - end:,} payload bytes belong to no stream")
    used: set[int] = set()

    def stream(index, what: str) -> dict:
        _int(index, what, 0, len(streams) - 1)
        if index in used:
            raise _corrupt(f"{what} reuses stream {index}")
        used.add(index)
        return streams[index]

    names, folded, total = set(), set(), 0
    for entry in files:
        if not isinstance(entry, dict):
            raise _corrupt(f"file entry {entry!r}")
        name = check_name(entry.get("name"))
        if name.casefold() in folded:
            raise _corrupt(f"'{name}' is listed twice")
        names.add(name)
        folded.add(name.casefold())
        size = _int(entry.get("bytes"), f"size of '{name}'", 0, _HUGE)  # the total is checked below
        total += size
        sha = entry.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _corrupt(f"sha256 of '{name}' is {sha!r}")
        if entry.get("encoding") == "whole":
            if stream(entry.get("stream"), f"stream of '{name}'")["raw_bytes"] != size:
                raise _corrupt(f"'{name}' declares {size:,} bytes but its stream a different size")
        elif entry.get("encoding") == "sparse":
            segments, parts = entry.get("segments"), entry.get("streams")
            if not isinstance(segments, list) or not isinstance(parts, dict) or not {"skeleton", "masks"} <= set(parts):
                raise _corrupt(f"sparse entry of '{name}'")
            cursor, cut, mask_bytes, by_size = 0, 0, 0, {}
            for seg in segments:
                if not isinstance(seg, list) or len(seg) != 3:
                    raise _corrupt(f"a segment of '{name}' is {seg!r}")
                offset = _int(seg[0], f"a segment offset of '{name}'", cursor, size)
                length = _int(seg[1], f"a segment length of '{name}'", 0, size - offset)
                itemsize = _int(seg[2], f"a segment item size of '{name}'", 1, MAX_ITEMSIZE)
                if length % itemsize:
                    raise _corrupt(f"a segment of '{name}' is not a whole number of items")
                cursor, cut = offset + length, cut + length
                mask_bytes += (length // itemsize + 7) // 8
                by_size[itemsize] = by_size.get(itemsize, 0) + length
            if set(parts) != {"skeleton", "masks", *(f"values{s}" for s in by_size)}:
                raise _corrupt(f"the streams of '{name}' are {sorted(parts)}")
            if stream(parts["skeleton"], f"skeleton of '{name}'")["raw_bytes"] != size - cut:
                raise _corrupt(f"the skeleton of '{name}' does not match its size")
            if stream(parts["masks"], f"masks of '{name}'")["raw_bytes"] != mask_bytes:
                raise _corrupt(f"the masks of '{name}' do not match its segments")
            for s, cut_bytes in by_size.items():
                raw = stream(parts[f"values{s}"], f"values of '{name}'")["raw_bytes"]
                if raw % s or raw > cut_bytes:  # at most every element of its segments is non-zero
                    raise _corrupt(f"the values of '{name}' do not fit its segments")
        else:
            raise BundleError(f"packed file '{name}' has unknown encoding {entry.get('encoding')!r}; update "
                              "edgekit_device.")
    clash = next((n for n in names if any("/".join(n.split("/")[:k]) in names for k in range(1, n.count("/") + 1))),
                 None)
    if clash:
        raise _corrupt(f"'{clash}' is inside a directory the pack also names as a file")
    limit = min(max_bytes, max(SMALL_UNPACKED_BYTES, MAX_EXPANSION * pack_bytes))
    if total > limit:
        raise BundleError(f"the packed bundle declares {total:,} unpacked bytes, more than this runtime accepts from "
                          f"a {pack_bytes:,}-byte file ({limit:,}); it is not a bundle edgekit packed, or pass a "
                          "larger max_bytes to unpack it.")


def _decompress_exactly(data: bytes, codec: str, size: int, name: str) -> bytes:
    """Decompress one stream to exactly ``size`` bytes, never holding more than ``size + 1``."""
    out = bytearray()
    pos = 0
    try:
        if codec == "zlib":
            d = zlib.decompressobj()
            pending = b""
            while not d.eof and len(out) <= size:
                if not pending:
                    pending = data[pos:pos + _CHUNK]
                    pos += len(pending)
                    if not pending:
                        break
                out += d.decompress(pending, size + 1 - len(out))
                pending = d.unconsumed_tail
            trailing = d.unused_data or pending or pos < len(data)
        else:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
            while not d.eof and len(out) <= size:
                chunk = b""
                if d.needs_input:
                    chunk = data[pos:pos + _CHUNK]
                    pos += len(chunk)
                    if not chunk:
                        break
                out += d.decompress(chunk, size + 1 - len(out))
            trailing = d.unused_data or pos < len(data)
        done = d.eof
    except (zlib.error, lzma.LZMAError, MemoryError):
        raise BundleError(f"packed data of '{name}' is corrupted; download the bundle again.") from None
    if len(out) > size:
        raise BundleError(f"packed data of '{name}' expands beyond its declared {size:,} bytes; the pack is "
                          "corrupted, download it again.")
    if not done or len(out) != size or trailing:
        raise BundleError(f"packed data of '{name}' is truncated or corrupted; download the bundle again.")
    return bytes(out)


def _read_file(entry: dict, streams: list[dict], payload: bytes) -> bytes:
    """The bytes of one packed file (``entry`` and ``streams`` checked by ``_check_header``)."""

    def stream(index: int) -> bytes:
        s = streams[index]
        return _decompress_exactly(payload[s["offset"]:s["offset"] + s["length"]], s["codec"], s["raw_bytes"],
                                   entry["name"])

    if entry["encoding"] == "whole":
        return stream(entry["stream"])
    names = entry["streams"]
    planes = {int(k[len("values"):]): stream(v) for k, v in names.items() if k.startswith("values")}
    return _sparse_join(stream(names["skeleton"]), stream(names["masks"]), planes,
                        [tuple(s) for s in entry["segments"]], entry["bytes"])


def read_pack(pack_file, max_bytes: int = MAX_UNPACKED_BYTES) -> tuple[dict, bytes]:
    """The checked header and the payload of ``pack_file``; raises ``BundleError`` for anything else."""
    pack_file = Path(pack_file)
    try:
        size = pack_file.stat().st_size
        if size > max_bytes + MAX_HEADER_BYTES:
            raise BundleError(f"'{pack_file}' is {size:,} bytes, more than a packed bundle this runtime accepts; "
                              "pass a larger max_bytes to unpack it.")
        blob = pack_file.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read the packed bundle '{pack_file}' ({e.strerror or e}).") from None
    header, payload = _parse(blob)
    _check_header(header, len(payload), len(blob), max_bytes)
    return header, payload


def unpack(pack_file, out_dir, overwrite: bool = False, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Restore the bundle directory packed in ``pack_file`` into ``out_dir``; returns ``out_dir``.

    ``out_dir`` must be missing or empty, or hold a bundle edgekit wrote and ``overwrite`` be true
    (``outdir.check_out_dir``: a file edgekit did not write is never replaced). Every file is
    checked against its declared size and sha256 and written into a temporary sibling that becomes
    ``out_dir`` only when all are; a pack that declares more than ``max_bytes`` (or a ratio no
    bundle has) is refused before anything is decompressed. Every problem is a ``BundleError``."""
    from .outdir import check_out_dir, replace_dir

    out_dir = Path(out_dir)
    check_out_dir(out_dir, "bundle", overwrite)
    try:
        header, payload = read_pack(pack_file, max_bytes)
    except _MALFORMED as e:  # a value _check_header did not foresee: still one sentence, never a traceback
        raise _corrupt(type(e).__name__) from None
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as e:
        raise BundleError(f"cannot create '{out_dir}' ({e.strerror or e}); choose a writable directory.") from None
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the bundle directory gets mkdir's mode
    try:
        root = tmp.resolve()
        for entry in header["files"]:
            name = entry["name"]
            target = (tmp / name).resolve()
            if root not in target.parents:  # check_name already refused it; a second line of defence
                raise BundleError(f"packed bundle names a file outside the bundle ('{name}'); refusing to unpack it.")
            try:
                data = _read_file(entry, header["streams"], payload)
            except _MALFORMED as e:
                raise _corrupt(f"'{name}': {type(e).__name__}") from None
            if _sha256(data) != entry["sha256"]:
                raise BundleError(f"unpacked '{name}' does not match its sha256; the pack is corrupted, download it again.")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as f:  # never through a link, never twice
                f.write(data)
        replace_dir(tmp, out_dir, "bundle", overwrite)
    except OSError as e:
        raise BundleError(f"cannot write the bundle into '{out_dir}' ({e.strerror or e}); free space or choose "
                          "another directory.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
