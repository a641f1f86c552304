""".edgepack unpack under hostile input: a few hundred mutated packs of a tiny bundle.

Every mutation (truncation, flipped bytes, header values, file names, sizes, decompression bombs)
ends in one ``BundleError`` sentence or in a correct unpack, never in another exception, never in a
file written outside ``--out``, never in more decompressed bytes than declared. The bundle is tiny
but real for the packer: an ONNX file whose float32 and int8 initializers are packed sparsely
(skeleton, masks, values1 and values4 streams) beside JSON files, in both codecs.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from edgekit_device import BundleError, pack, unpack
from edgekit_device.outdir import MARKER
from edgekit_device.pack import MAGIC, MAX_EXPANSION, SMALL_UNPACKED_BYTES


def _tiny_onnx(path: Path) -> None:
    """y = (x @ W) * s + b with a 50%-zero float32 W (48x32) and a 50%-zero int8 s table (64x40)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(48, 32)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    s = rng.integers(-100, 100, size=(64, 40)).astype(np.int8)
    s[rng.random(s.shape) < 0.5] = 0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(s, "S")])
    onnx.save(helper.make_model(graph), str(path))


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, bytes]:
    bundle = tmp_path_factory.mktemp("fuzz") / "bundle"
    bundle.mkdir()
    _tiny_onnx(bundle / "model.onnx")
    (bundle / "labels.json").write_text(json.dumps(["negative", "positive"]))
    (bundle / "manifest.json").write_text(json.dumps({"format_version": 1, "note": "tiny " * 50}))
    (bundle / "sub").mkdir()
    (bundle / "sub" / "vocab.txt").write_text("\n".join(f"piece{i}" for i in range(300)))
    out = {}
    for codec in ("zlib", "xz"):
        report = pack(bundle, bundle.parent / f"{codec}.edgepack", codec=codec)
        assert set(report["files"]["model.onnx"]["parts"]) == {"skeleton", "masks", "values1", "values4"}
        out[codec] = (bundle.parent / f"{codec}.edgepack").read_bytes()
    return out


def _split(blob: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    return json.loads(blob[start:start + size]), blob[start + size:]


def _join(header, payload: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + payload


def _header_mutations(blob: bytes) -> list[tuple[str, bytes]]:
    """(what, pack) for each hostile header value."""
    header, payload = _split(blob)
    cases = []

    def mutate(what, change):
        h = json.loads(json.dumps(header))
        change(h)
        cases.append((what, _join(h, payload)))

    whole = next(i for i, f in enumerate(header["files"]) if f["encoding"] == "whole")
    sparse = next(i for i, f in enumerate(header["files"]) if f["encoding"] == "sparse")
    for name in ("../evil.txt", "../../evil.txt", "/tmp/edgekit-evil.txt", "a/../../evil.txt", "..", ".", "",
                 "a//b", "C:/evil.txt", "a\\..\\evil.txt", "x\x00y", "line\nbreak", MARKER, "sub/../../evil.txt",
                 "./labels.json", "a" * 300, 5, None, ["x"]):
        mutate(f"name {name!r}", lambda h, n=name: h["files"][whole].update(name=n))
    mutate("duplicate name", lambda h: h["files"].append(dict(h["files"][whole])))
    mutate("case-only duplicate", lambda h: h["files"][whole].update(name=h["files"][whole]["name"].upper())
           or h["files"].append(dict(h["files"][whole], name=h["files"][whole]["name"].lower())))
    mutate("a file named like a directory", lambda h: h["files"][whole].update(name="sub"))
    for key, value in (("bytes", 2 ** 40), ("bytes", -1), ("bytes", True), ("bytes", "12"), ("bytes", 1.5),
                       ("bytes", 0), ("sha256", "0" * 64), ("sha256", 42), ("sha256", "zz"), ("stream", 999),
                       ("stream", -1), ("stream", None), ("encoding", "bzip"), ("encoding", None)):
        mutate(f"whole {key}={value!r}", lambda h, k=key, v=value: h["files"][whole].update({k: v}))
    for key in ("name", "bytes", "sha256", "encoding", "stream"):
        mutate(f"whole without {key}", lambda h, k=key: h["files"][whole].pop(k))
    for segs in ([[0, 2 ** 40, 4]], [[-4, 8, 4]], [[0, 6, 4]], [[0, 8, 0]], [[0, 8, 17]], [[0, 8]],
                 "x", [[8, 8, 4], [0, 8, 4]], [[0, 16, 4], [8, 16, 4]], [[True, 8, 4]]):
        mutate(f"segments {segs!r}", lambda h, v=segs: h["files"][sparse].update(segments=v))
    mutate("segment shifted", lambda h: h["files"][sparse]["segments"][0].__setitem__(0,
                                                                                       h["files"][sparse]["segments"][0][0] + 4))
    mutate("sparse without masks", lambda h: h["files"][sparse]["streams"].pop("masks"))
    mutate("sparse extra values stream", lambda h: h["files"][sparse]["streams"].update(values8=0))
    mutate("sparse streams swapped", lambda h: h["files"][sparse]["streams"].update(
        skeleton=h["files"][sparse]["streams"]["masks"], masks=h["files"][sparse]["streams"]["skeleton"]))
    mutate("stream reused", lambda h: h["files"][sparse]["streams"].update(masks=h["files"][whole]["stream"]))
    for key, value in (("offset", 10 ** 12), ("offset", -1), ("length", 10 ** 12), ("length", 0),
                       ("raw_bytes", 2 ** 40), ("raw_bytes", 3 << 30), ("raw_bytes", -5), ("raw_bytes", 1),
                       ("codec", "gzip"), ("codec", None), ("offset", "0")):
        for index in (0, len(header["streams"]) - 1):
            mutate(f"stream {index} {key}={value!r}", lambda h, i=index, k=key, v=value: h["streams"][i].update({k: v}))
    for top in ({"files": [], "streams": "x"}, {"files": "x"}, {"version": 2}, {"format": "zip"}):
        mutate(f"header {top!r}", lambda h, t=top: h.update(t))
    mutate("files not objects", lambda h: h.update(files=[1, 2]))
    mutate("streams not objects", lambda h: h.update(streams=[None]))
    mutate("ten thousand and one files", lambda h: h.update(files=[h["files"][whole]] * 10_001))
    for raw in (b"[]", b"42", b"null", b"\xff\xfe", b"{" * 100_000 + b"}" * 100_000, b'{"format": "edgekit-pack"'):
        cases.append((f"header {raw[:12]!r}", _join(raw, payload)))
    cases.append(("header length past the end", MAGIC + struct.pack("<I", 2 ** 32 - 1) + blob[len(MAGIC) + 4:]))
    cases.append(("magic only", MAGIC))
    cases.append(("wrong magic", b"PK\x03\x04" + blob[4:]))
    cases.append(("empty file", b""))
    return cases


def _bombs() -> list[tuple[str, bytes]]:
    """Small packs whose streams expand far beyond what they declare, or declare absurd sizes."""
    zeros = zlib.compress(bytes(50 << 20), 9)  # 50 MiB of zeros in about 50 KB
    entry = {"name": "model.onnx", "sha256": "0" * 64, "encoding": "whole", "stream": 0}
    small = {"format": "edgekit-pack", "version": 1, "files": [dict(entry, bytes=1000)],
             "streams": [{"codec": "zlib", "offset": 0, "length": len(zeros), "raw_bytes": 1000}]}
    honest = {"format": "edgekit-pack", "version": 1, "files": [dict(entry, bytes=50 << 20)],
              "streams": [{"codec": "zlib", "offset": 0, "length": len(zeros), "raw_bytes": 50 << 20}]}
    huge = {"format": "edgekit-pack", "version": 1, "files": [dict(entry, bytes=3 << 30)],
            "streams": [{"codec": "zlib", "offset": 0, "length": len(zeros), "raw_bytes": 3 << 30}]}
    return [("50 MiB declared as 1000 bytes", _join(small, zeros)),
            ("3 GiB declared", _join(huge, zeros)),
            ("50 MiB of zeros, honestly declared, wrong sha256", _join(honest, zeros))]


def _mutations(packs: dict[str, bytes]) -> list[tuple[str, bytes]]:
    rng = random.Random(10)
    cases = []
    for codec, blob in packs.items():
        header_end = len(MAGIC) + 4 + struct.unpack_from("<I", blob, len(MAGIC))[0]
        cuts = sorted({*range(0, header_end + 40, 7), *rng.sample(range(header_end, len(blob)), 40), len(blob) - 1})
        cases += [(f"{codec} truncated at {n}", blob[:n]) for n in cuts]
        for _ in range(60):
            data = bytearray(blob)
            at = rng.randrange(header_end, len(blob)) if rng.random() < 0.8 else rng.randrange(len(MAGIC), header_end)
            data[at] ^= 1 << rng.randrange(8)
            cases.append((f"{codec} bit flipped at {at}", bytes(data)))
        cases.append((f"{codec} trailing garbage", blob + b"\x00garbage"))
        cases += [(f"{codec} {what}", data) for what, data in _header_mutations(blob)]
    return cases + _bombs()


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_mutated_packs_give_one_sentence_and_write_nothing_outside_out(packs, tmp_path):
    cases = _mutations(packs)
    assert len(cases) >= 300
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (tmp_path / "victim.txt").write_text("keep me")
    outside_before = _tree(tmp_path)
    refused = unpacked = 0
    start = time.perf_counter()
    for i, (what, data) in enumerate(cases):
        pack_file = sandbox / f"case{i}.edgepack"
        pack_file.write_bytes(data)
        out = sandbox / f"out{i}"
        t0 = time.perf_counter()
        try:
            unpack(pack_file, out)
        except BundleError as e:
            message = str(e)
            assert message.endswith(".") and "\n" not in message and "Traceback" not in message, (what, message)
            assert not out.exists(), f"{what}: a refused pack left {out}"
            refused += 1
        except Exception as e:  # pragma: no cover - the failure this test exists to catch
            pytest.fail(f"{what}: {type(e).__name__}: {e}")
        else:
            unpacked += 1
            resolved = out.resolve()
            assert all(resolved in p.resolve().parents for p in out.rglob("*")), what
        assert time.perf_counter() - t0 < 2.0, f"{what}: unpack took too long"
        pack_file.unlink()
        stray = {n for n in _tree(sandbox) if not n.startswith("out")}
        assert not stray, f"{what}: wrote {stray} outside --out"
    assert _tree(tmp_path) - {"sandbox"} - {n for n in _tree(tmp_path) if n.startswith("sandbox/")} == \
        outside_before - {"sandbox"}, "a file appeared beside the sandbox"
    assert (tmp_path / "victim.txt").read_text() == "keep me"
    assert not Path("/tmp/edgekit-evil.txt").exists()
    assert refused > 250 and unpacked < 20, (refused, unpacked)  # nearly every mutation is caught
    assert time.perf_counter() - start < 20


def test_limits_are_what_the_messages_say(packs, tmp_path):
    for what, data in _bombs():
        (tmp_path / "bomb.edgepack").write_bytes(data)
        with pytest.raises(BundleError) as e:
            unpack(tmp_path / "bomb.edgepack", tmp_path / "out")
        if "1000 bytes" in what:
            assert "beyond its declared 1,000 bytes" in str(e.value)
        elif "3 GiB" in what:
            limit = min(2 << 30, max(SMALL_UNPACKED_BYTES, MAX_EXPANSION * len(data)))
            assert f"declares {3 << 30:,} unpacked bytes" in str(e.value) and f"({limit:,})" in str(e.value)
        else:
            assert "does not match its sha256" in str(e.value)
    for name in ("../evil.txt", "/tmp/edgekit-evil.txt", "a/../../evil.txt"):
        header, payload = _split(packs["zlib"])
        header["files"][0]["name"] = name
        (tmp_path / "names.edgepack").write_bytes(_join(header, payload))
        with pytest.raises(BundleError, match=r"names a file '.*' outside a plain relative path; refusing"):
            unpack(tmp_path / "names.edgepack", tmp_path / "out")


def test_the_untouched_packs_unpack_bit_exactly(packs, tmp_path):
    for codec, blob in packs.items():
        (tmp_path / f"{codec}.edgepack").write_bytes(blob)
        out = unpack(tmp_path / f"{codec}.edgepack", tmp_path / codec)
        assert sorted(_tree(out)) == [MARKER, "labels.json", "manifest.json", "model.onnx", "sub", "sub/vocab.txt"]


@pytest.mark.parametrize("what", ["truncated", "bomb", "escape"])
def test_cli_unpack_of_a_bad_pack_is_one_line_and_exit_2(packs, tmp_path, what):
    header, payload = _split(packs["xz"])
    if what == "truncated":
        data = packs["xz"][:len(packs["xz"]) // 2]
    elif what == "bomb":
        data = _bombs()[0][1]
    else:
        header["files"][0]["name"] = "../../evil.txt"
        data = _join(header, payload)
    (tmp_path / "bad.edgepack").write_bytes(data)
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "bundle", "unpack", str(tmp_path / "bad.edgepack"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.edgepack"]
