"""The phone app's Java core (android_demo/core) against the Python reference runtime (edgekit_device).

Builds tiny bundles with ``edgekit.export`` (ONNX per-layer and fixed, and per-layer with a
mean-pooled head, whose head graph takes the attention mask; TFLite per-layer when LiteRT is
installed), writes golden outputs with ``android_demo/tools/make_goldens.py`` (token ids
of ~470 texts under a WordPiece, an e5-trimmed Unigram and an extended Unigram device tokenizer;
per-layer logits and the reference ``Predictor``'s fixed, patience and entropy decisions),
compiles the core and its test main with javac and runs it. The Java side cannot run ONNX or
TFLite here; it replays the recorded logits through its own graph loop, so everything around the
model is compared.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "android_demo"
CORE = APP / "core" / "src"
SHARED = ROOT.parent / "shared"
VOCAB_DIR = SHARED / "data" / "vocab" / "bert-base-chinese"
LABELS = ["体育", "财经", "科技"]

sys.path.insert(0, str(APP / "tools"))

needs_jdk = pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None,
                               reason="javac/java not found: the Android core's JVM tests need a JDK "
                                      "(e.g. apt-get install openjdk-17-jdk-headless)")


def _tflite_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_litert"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny 4-layer classifier over the bert-base-chinese vocabulary, saved with its tokenizer.

    Its matrices are redrawn with std 0.5 (instead of 0.02): random logits are then large and
    input-dependent, so predictions and entropies differ across texts and layers and the dynamic
    exits stop at different layers (with the default init every text gets the same label)."""
    import torch
    from transformers import BertTokenizerFast

    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.student import StudentConfig, build_student

    path = tmp_path_factory.mktemp("android") / "classifier"
    tokenizer = BertTokenizerFast.from_pretrained(VOCAB_DIR)
    student = build_student(StudentConfig(num_layers=4, num_heads=2, hidden_size=32, embedding_size=16,
                                          intermediate_size=64), vocab_size=len(tokenizer), pooler=True, seed=0)
    classifier = EarlyExitClassifier.from_student(student, num_labels=len(LABELS))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in classifier.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    config = classifier.model.config
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {label: i for i, label in enumerate(LABELS)}
    classifier.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def unigram_tokenizer(tmp_path_factory) -> Path:
    """device_tokenizer.json of the e5-small tokenizer trimmed on TNEWS train sentences (the dev
    sentences the goldens use then meet pieces that were trimmed away)."""
    from transformers import AutoTokenizer

    from edgekit.checkpoint import resolve_teacher
    from edgekit.export.device_tokenizer import device_tokenizer_spec
    from edgekit.vocab import trim_vocabulary
    from make_goldens import tnews_sentences

    teacher = AutoTokenizer.from_pretrained(resolve_teacher("e5-small"))
    trimmed = trim_vocabulary(teacher, tnews_sentences(2000, "train.json")).tokenizer
    path = tmp_path_factory.mktemp("unigram") / "device_tokenizer.json"
    path.write_text(json.dumps(device_tokenizer_spec(trimmed), ensure_ascii=False, separators=(",", ":")),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def extra_tokenizer(unigram_tokenizer) -> Path:
    """The trimmed e5 tokenizer with multi-codepoint charsmap keys and an overlapping added token
    (make_goldens.EXTRA_CHARSMAP, EXTRA_ADDED)."""
    from make_goldens import with_extra_entries

    spec = with_extra_entries(json.loads(unigram_tokenizer.read_text(encoding="utf-8")))
    path = unigram_tokenizer.with_name("device_tokenizer_extra.json")
    path.write_text(json.dumps(spec, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mean_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """``checkpoint`` with ``classifier_pooling: mean`` (the head reads the masked token mean)."""
    path = tmp_path_factory.mktemp("android-mean") / "classifier"
    shutil.copytree(checkpoint, path)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config["classifier_pooling"] = "mean"
    (path / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bundles(checkpoint, mean_checkpoint, tmp_path_factory) -> dict:
    import torch

    from edgekit.export import export_model
    from make_goldens import tnews_sentences

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bundles")
    samples = tnews_sentences(48)
    try:
        made = {"onnx-per-layer": export_model(checkpoint, out / "onnx", format="onnx", max_length=32,
                                               sample_texts=samples),
                "onnx-fixed-2": export_model(checkpoint, out / "onnx-fixed", format="onnx", max_length=32,
                                             exit_layer=2, sample_texts=samples)}
        # The same weights with a mean-pooled head: its head graph takes the attention mask too.
        made["onnx-per-layer-mean"] = export_model(mean_checkpoint, out / "onnx-mean", format="onnx", max_length=32,
                                                   sample_texts=samples)
        if _tflite_available():
            made["tflite-per-layer"] = export_model(checkpoint, out / "tflite", format="tflite", max_length=32,
                                                    sample_texts=samples)
    finally:
        torch.set_num_threads(threads)
    return made


PACKED = ("onnx-per-layer", "tflite-per-layer")  # loaded on the JVM from their .edgepack, as the app does


def _edit_pack(blob: bytes, edit) -> bytes:
    """``blob`` with its header (and payload) replaced by ``edit(header, payload)``."""
    size = struct.unpack_from("<I", blob, 8)[0]
    header, payload = edit(json.loads(blob[12:12 + size]), blob[12 + size:])
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return blob[:8] + struct.pack("<I", len(raw)) + raw + payload


def _bad_packs(bundle_dir: Path, pack: Path, out: Path) -> list[dict]:
    """Packs the Java core must refuse, each with the fragment its message must contain."""
    import edgekit_device

    blob = pack.read_bytes()
    size = struct.unpack_from("<I", blob, 8)[0]
    flipped = bytearray(blob)
    flipped[12 + size + (len(blob) - 12 - size) * 2 // 3] ^= 0x55

    def whole(header):
        return next(f for f in header["files"] if f["encoding"] == "whole")

    def rename(h, p):
        whole(h)["name"] = "../labels.json"
        return h, p

    def bomb(h, p):
        entry = whole(h)
        entry["bytes"] = h["streams"][entry["stream"]]["raw_bytes"] = 1 << 30
        return h, p

    def reuse(h, p):
        first, second = [f for f in h["files"] if f["encoding"] == "whole"][:2]
        second["stream"] = first["stream"]
        return h, p

    def gap(h, p):
        h["streams"][-1]["offset"] += 1
        return h, p

    def version(h, p):
        return {**h, "version": 2}, p

    cases = [("flipped payload byte", bytes(flipped), "corrupted"),
             ("truncated", blob[:-16], "malformed"),
             ("not a pack", (bundle_dir / "manifest.json").read_bytes(), "not a packed edgekit bundle"),
             ("name outside the bundle", _edit_pack(blob, rename), "outside a plain relative path"),
             ("decompression bomb", _edit_pack(blob, bomb), "more than this app accepts"),
             ("stream used twice", _edit_pack(blob, reuse), "reuses stream"),
             ("gap between streams", _edit_pack(blob, gap), "malformed"),
             ("unknown version", _edit_pack(blob, version), "pack version 2 is not supported")]
    files = []
    for i, (what, data, expect) in enumerate(cases):
        path = out / f"bad-{i}.edgepack"
        path.write_bytes(data)
        files.append({"what": what, "file": path, "expect": expect})
    # xz: the Python runtime reads it, the phone and the browser do not; the message says how to repack.
    edgekit_device.pack(bundle_dir, out / "xz.edgepack", codec="xz")
    files.append({"what": "xz codec", "file": out / "xz.edgepack", "expect": "this app reads zlib packs"})
    # Consistent with its own header, not with manifest.json: a file changed after export.
    edited = out / "edited-bundle"
    shutil.copytree(bundle_dir, edited)
    labels = (edited / "labels.json").read_text(encoding="utf-8")
    (edited / "labels.json").write_text(labels.replace(LABELS[0], "sports"), encoding="utf-8")  # same byte count
    edgekit_device.pack(edited, out / "edited.edgepack", codec="zlib")
    files.append({"what": "file changed after export", "file": out / "edited.edgepack",
                  "expect": "'labels.json' does not match its sha256 in manifest.json"})
    return files


@pytest.fixture(scope="module")
def packs(bundles, tmp_path_factory) -> dict:
    """zlib packs of the PACKED bundles (the format the phone reads)."""
    import edgekit_device

    out = tmp_path_factory.mktemp("packs")
    made = {}
    for name in PACKED:
        if name in bundles:
            made[name] = out / f"{name}.edgepack"
            edgekit_device.pack(bundles[name], made[name], codec="zlib")
    return made


@pytest.fixture(scope="module")
def goldens(bundles, packs, unigram_tokenizer, extra_tokenizer, tmp_path_factory) -> Path:
    from make_goldens import write_goldens

    wordpiece = bundles["onnx-per-layer"] / "device_tokenizer.json"
    out = tmp_path_factory.mktemp("goldens")
    bad = _bad_packs(bundles["onnx-per-layer"], packs["onnx-per-layer"], out)
    return write_goldens(out / "goldens.json", bundles,
                         {"wordpiece": wordpiece, "unigram-e5-trimmed": unigram_tokenizer,
                          "unigram-extra-entries": extra_tokenizer}, packs=packs, bad_packs=bad)


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("classes")
    sources = sorted(str(p) for p in CORE.rglob("*.java"))
    # --release 8: the core must compile against the Java 8 API, which Android (minSdk 24) provides.
    command = ["javac", "--release", "8", "-Xlint:all", "-Xlint:-options", "-Werror", "-encoding", "UTF-8",
               "-d", str(out), *sources]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"javac failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_core_has_no_android_imports():
    banned = ("import android", "import androidx", "import org.json", "import org.tensorflow")
    offenders = [str(p.relative_to(APP)) for p in (CORE / "main").rglob("*.java")
                 if any(line.startswith(banned) for line in p.read_text(encoding="utf-8").splitlines())]
    assert not offenders, f"the core must stay plain Java: {offenders}"


def test_app_opens_bundles_through_the_entries_the_jvm_test_drives():
    """The app cannot be built here (no Android SDK): at least its use of the core is the tested one."""
    app = (APP / "app/src/main/java/io/edgekit/demo/AssetBundleFiles.java").read_text(encoding="utf-8")
    activity = (APP / "app/src/main/java/io/edgekit/demo/MainActivity.java").read_text(encoding="utf-8")
    golden = (CORE / "test/java/io/edgekit/core/GoldenTest.java").read_text(encoding="utf-8")
    assert 'Bundle.loadPacked(pack, "assets/" + PACK)' in app and "Bundle.load(new AssetBundleFiles(" in app
    assert "AssetBundleFiles.open(getAssets(), BUNDLE_ASSETS)" in activity and "Bundle.load(" not in activity
    assert "Bundle.loadPacked(pack, packFile)" in golden and "Bundle.load(new BundleFiles.Directory(dir), true)" in golden


@pytest.fixture(scope="module")
def java_run(classes, goldens) -> subprocess.CompletedProcess:
    """GoldenTest run once on the goldens; the tests below read its report."""
    return subprocess.run(["java", "-cp", str(classes), "io.edgekit.core.GoldenTest", str(goldens)],
                          capture_output=True, text=True, timeout=300)


@needs_jdk
def test_java_core_matches_reference_runtime(java_run, bundles):
    result = java_run
    print(result.stdout)
    assert result.returncode == 0, (f"Java core disagrees with edgekit_device:\n{result.stdout[-6000:]}\n"
                                    f"{result.stderr[-3000:]}")
    # Every golden group was actually compared.
    assert "tokenizer wordpiece (wordpiece):" in result.stdout
    assert "tokenizer unigram-e5-trimmed (unigram):" in result.stdout
    assert "tokenizer unigram-extra-entries (unigram):" in result.stdout
    for name in bundles:
        assert f"bundle {name} " in result.stdout
    assert "bundle onnx-per-layer-mean (onnx, per-layer, mean pooling" in result.stdout


@needs_jdk
def test_java_core_decodes_packed_bundles(java_run, goldens, packs):
    """The app's entry (Bundle.loadPacked) decodes the zlib .edgepack bit-exactly, and the replayed
    predictions above ran on the bundle decoded from it; every bad pack is refused with its reason."""
    result = java_run
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    data = json.loads(goldens.read_text(encoding="utf-8"))
    for name in packs:
        files = len(json.loads((Path(next(b["dir"] for b in data["bundles"] if b["name"] == name))
                                / "manifest.json").read_text(encoding="utf-8"))["files"]) + 1
        assert f"pack {name}: {packs[name].stat().st_size} bytes decode to {files}/{files} files identical" \
            in result.stdout, result.stdout
        assert f"bundle {name} from its .edgepack (" in result.stdout
    bad = len(data["bad_packs"])
    assert bad >= 10 and f"bad packs: {bad}/{bad} refused with the expected reason" in result.stdout


@needs_jdk
def test_goldens_exercise_every_exit_rule(goldens):
    """The golden decisions are not degenerate: dynamic runs stop at more than one layer."""
    data = json.loads(goldens.read_text(encoding="utf-8"))
    per_layer = [b for b in data["bundles"] if b["expect"]["layout"] == "per-layer"]
    assert per_layer
    for bundle in per_layer:
        for kind in ("patience", "entropy"):
            seen = set()
            for run in bundle["runs"]:
                if run["kind"] == kind:
                    seen.update(run["exit_layers_seen"])
            assert len(seen) > 1, f"{bundle['name']}: every {kind} run exits at the same layer {seen}"
    for tok in data["tokenizers"]:
        assert len(tok["cases"]) >= 200
        assert any(len(c["ids"]) > tok["max_length"] for c in tok["cases"]), "no text exercises truncation"
        assert any(tok["unk_id"] in c["ids"] for c in tok["cases"]), "no text exercises the unknown id"
