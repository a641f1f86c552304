"""The browser demo (``web_demo/``, ``edgekit demo web``) against the Python reference runtime.

- The page's tokenizer (``web_demo/tokenizer.js``, run in Node) gives exactly the ids of
  ``edgekit_device.Tokenizer`` for a WordPiece (bert-base-chinese) and a Unigram (e5) spec.
- The server hands out only the page, onnxruntime-web's dist and the bundle's files, with the
  right MIME types; bad bundles are one ``error:`` line and exit status 2.
- End to end, in headless Chromium (playwright-core, ``web_demo/tools/e2e.mjs``) against the real
  ``edgekit demo web`` command: texts typed into the page give the token ids, label, exit layer
  and scores (within 1e-4) that ``edgekit_device.Predictor`` gives for the same bundle, at fixed
  exits and dynamic ones (PABEE patience, DeeBERT entropy), for a per-layer fp32 bundle, a fixed
  bundle, a per-layer int8 bundle and a per-layer bundle with a mean-pooled head.

Needs Node 20+, ``npm ci --prefix web_demo`` and Debian's ``chromium`` (``EDGEKIT_CHROMIUM``
overrides the path); without them the tests skip with the reason, or fail when
``EDGEKIT_REQUIRE_WEB_DEMO=1`` (CI sets it, so the end-to-end tests cannot be skipped silently).
``EDGEKIT_WEB_DEMO_SCREENSHOT=PATH`` keeps the screenshot of the page.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, clue_sentences
from test_cli_errors import assert_clean_error, run_cli

WEB = ROOT / "web_demo"
ORT_ENTRY = WEB / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs"
PLAYWRIGHT = WEB / "node_modules" / "playwright-core" / "package.json"
CHROMIUM = os.environ.get("EDGEKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("EDGEKIT_REQUIRE_WEB_DEMO") == "1"
LABELS = ["负面", "中性", "正面"]
TEXTS = [
    "这家店的菜很好吃，服务也很热情！",
    "物流太慢了，包装也破了，再也不买了。",
    "iPhone 15 的电池续航怎么样？",
    "今天天气不错, let's go hiking 吧 😀",
    "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ１２３，全角！",
    "café naïve 北京欢迎你",
]
TOL = 1e-4


def need(ok, reason: str) -> None:
    if not ok:
        if REQUIRED:
            pytest.fail(f"{reason} (EDGEKIT_REQUIRE_WEB_DEMO=1 requires the web demo's tools)")
        pytest.skip(reason)


def need_node() -> None:
    need(shutil.which("node"), "node is not installed (the web demo needs Node 20+)")


def need_node_modules() -> None:
    need_node()
    need(ORT_ENTRY.is_file() and PLAYWRIGHT.is_file(),
         "web_demo/node_modules is missing: run `npm ci --prefix web_demo`")


def need_chromium() -> None:
    need_node_modules()
    need(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM}: `apt-get install -y chromium` "
                                   "(or set EDGEKIT_CHROMIUM)")


# Listed first by the tests that need them, so that a skip comes before any bundle is exported.
@pytest.fixture(scope="module")
def node():
    need_node()


@pytest.fixture(scope="module")
def node_modules():
    need_node_modules()


@pytest.fixture(scope="module")
def chromium():
    need_chromium()


# ---------------------------------------------------------------------------------------------
# A tiny classifier and its bundles


@pytest.fixture(scope="module")
def classifier_dir(tiny_classifier, tmp_path_factory):
    """conftest's tiny classifier (4 shared layers, bert-base-chinese WordPiece, weights that make
    texts and exits disagree), its labels renamed to Chinese ones: they travel through
    labels.json to the page too."""
    path = tmp_path_factory.mktemp("web") / "classifier"
    shutil.copytree(tiny_classifier, path)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config["id2label"] = {str(i): name for i, name in enumerate(LABELS)}
    config["label2id"] = {name: i for i, name in enumerate(LABELS)}
    (path / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bundle(classifier_dir):
    """The per-layer fp32 ONNX bundle: every exit, fixed or dynamic."""
    from edgekit.export import export_model

    return export_model(classifier_dir, classifier_dir.parent / "bundle", sample_texts=TEXTS)


@pytest.fixture(scope="module")
def fixed_bundle(classifier_dir):
    """A fixed bundle: one graph computing exactly 2 layers."""
    from edgekit.export import export_model

    return export_model(classifier_dir, classifier_dir.parent / "fixed2", exit_layer=2, sample_texts=TEXTS)


@pytest.fixture(scope="module")
def mean_bundle(classifier_dir):
    """The per-layer fp32 bundle of the same weights with a mean-pooled head (``classifier_pooling:
    mean``): its head graph takes the attention mask too."""
    from edgekit.export import export_model

    path = classifier_dir.parent / "classifier-mean"
    shutil.copytree(classifier_dir, path)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    (path / "config.json").write_text(json.dumps({**config, "classifier_pooling": "mean"}, ensure_ascii=False),
                                      encoding="utf-8")
    return export_model(path, classifier_dir.parent / "mean", sample_texts=TEXTS)


@pytest.fixture(scope="module")
def int8_bundle(classifier_dir):
    """The per-layer int8 bundle (dynamic quantization: DynamicQuantizeLinear + MatMulInteger)."""
    from edgekit.export import export_model

    return export_model(classifier_dir, classifier_dir.parent / "int8", int8=True, sample_texts=TEXTS)


# ---------------------------------------------------------------------------------------------
# The tokenizer: JS == Python, id for id


def js_encode(spec_path: Path, texts: list[str], max_length: int | None) -> list[list[int]]:
    args = ["node", str(WEB / "tools" / "tokenize.mjs"), str(spec_path)] + ([str(max_length)] if max_length else [])
    proc = subprocess.run(args, input=json.dumps(texts), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def tricky_texts() -> list[str]:
    from edgekit.export.parity import PROBE_TEXTS

    return PROBE_TEXTS + TEXTS + [
        "[CLS] 文本 [SEP] [MASK] [UNK] <s> </s> <mask>",  # special tokens typed as text
        "𠀀𠀁 𝐀𝐁𝐂 \U0001F600\U0001F44D\U0001F3FD 👨‍👩‍👧 🇨🇳🇺🇸🇯",  # astral planes, ZWJ and flag sequences
        "ﬁﬂ ㍿ ① Ⅻ ½ ＡＢＣ Ａ\u0301 e\u0301 क्षत्रिय 한국어",  # compatibility forms, combining marks, Indic
        "a" * 120 + " " + "中" * 80,  # a word over WordPiece's 100 characters; truncation
        "  leading   and trailing\u3000spaces  ", "\u0000\u0001\u007f\u0085\u2028 controls", "##ab ##",
        "unaffable unbelievable antidisestablishmentarianism", "", " ",
    ]


def test_js_tokenizer_matches_python_wordpiece(node, bundle):
    import edgekit_device

    spec_path = bundle / "device_tokenizer.json"
    tokenizer = edgekit_device.Tokenizer.from_file(spec_path)
    texts = clue_sentences(300) + clue_sentences(200, "iflytek") + tricky_texts()
    for max_length in (None, 32):
        expected = [tokenizer.encode(t, max_length) for t in texts]
        got = js_encode(spec_path, texts, max_length)
        mismatches = [(t, e, g) for t, e, g in zip(texts, expected, got) if e != g]
        assert not mismatches, mismatches[:3]


@pytest.mark.e5
def test_js_tokenizer_matches_python_unigram(node, tmp_path):
    """An e5-trimmed student's spec (what an e5-distilled bundle ships): Precompiled charsmap over
    grapheme clusters, Replace, Metaspace, Isolate and the Unigram Viterbi with fused unknowns."""
    import edgekit_device
    from edgekit.checkpoint import load_tokenizer, resolve_teacher
    from edgekit.export.device_tokenizer import device_tokenizer_spec
    from edgekit.vocab import trim_vocabulary

    corpus = clue_sentences(1300)
    student = trim_vocabulary(load_tokenizer(resolve_teacher("e5-small")), corpus[:1000]).tokenizer
    spec = device_tokenizer_spec(student)
    assert spec["type"] == "unigram"
    assert [s["type"] for s in spec["normalizer"]] == ["precompiled", "replace"]
    spec_path = tmp_path / "device_tokenizer.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    tokenizer = edgekit_device.Tokenizer.from_file(spec_path)
    texts = corpus[1000:1300] + clue_sentences(100, "iflytek") + tricky_texts()  # held out: pieces trimmed away
    expected = [tokenizer.encode(t, 128) for t in texts]
    assert sum(student.unk_token_id in ids for ids in expected) > 50  # fused unknowns are exercised
    got = js_encode(spec_path, texts, 128)
    mismatches = [(t, e, g) for t, e, g in zip(texts, expected, got) if e != g]
    assert not mismatches, mismatches[:3]


# ---------------------------------------------------------------------------------------------
# The server


def get(server_url: str, path: str, method: str = "GET"):
    """(status, content type, body) for a raw request path (no client-side normalization of '..')."""
    host_port = server_url.split("//", 1)[1].rstrip("/")
    conn = http.client.HTTPConnection(host_port, timeout=30)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def test_server_serves_page_ort_and_bundle_only(node_modules, bundle, tmp_path):
    from edgekit.demo import start_in_thread

    served = tmp_path / "bundle"
    shutil.copytree(bundle, served)
    (served / "secret.txt").write_text("not listed in the manifest")
    server = start_in_thread(served)
    try:
        ok = {
            "/": "text/html", "/index.html": "text/html", "/app.js": "text/javascript",
            "/tokenizer.js": "text/javascript", "/style.css": "text/css",
            "/ort/ort.wasm.min.mjs": "text/javascript", "/ort/ort-wasm-simd-threaded.mjs": "text/javascript",
            "/ort/ort-wasm-simd-threaded.wasm": "application/wasm", "/bundle/manifest.json": "application/json",
            "/bundle/device_tokenizer.json": "application/json", "/bundle/layer.onnx": "application/octet-stream",
        }
        for path, mime in ok.items():
            status, content_type, body = get(server.url, path)
            assert status == 200 and content_type.startswith(mime), (path, status, content_type)
            assert body
        assert get(server.url, "/bundle/embed.onnx")[2] == (bundle / "embed.onnx").read_bytes()
        assert get(server.url, "/ort/ort-wasm-simd-threaded.wasm", "HEAD")[:2] == (200, "application/wasm")
        for path in ("/package.json", "/package-lock.json", "/tools/e2e.mjs", "/node_modules/onnxruntime-web/package.json",
                     "/ort/../package.json", "/ort/%2e%2e/%2e%2e/package.json", "/bundle/../../web_demo/app.js",
                     "/bundle/secret.txt", "/bundle/missing.onnx", "/ort/", "/../edgekit/demo.py", "/%2e%2e/pyproject.toml",
                     "/bundle/%2Fetc%2Fpasswd", "/index.html/", "//etc/passwd"):
            assert get(server.url, path)[0] == 404, path
    finally:
        server.shutdown()
        server.server_close()


def test_demo_command_rejects_bad_bundles(bundle, tmp_path):
    proc = run_cli("demo", "web", tmp_path / "nope")
    assert_clean_error(proc, r"bundle directory '.*nope' does not exist")
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("demo", "web", tmp_path / "empty"), r"is not a bundle \(it has no manifest.json\)")
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    data = bytearray((broken / "head.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "head.onnx").write_bytes(bytes(data))
    assert_clean_error(run_cli("demo", "web", broken), r"'head.onnx' does not match its sha256")
    shutil.copy(bundle / "head.onnx", broken / "head.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    (broken / "manifest.json").write_text(json.dumps({**manifest, "format": "tflite"}), encoding="utf-8")
    assert_clean_error(run_cli("demo", "web", broken, "--port", "0"), r"ONNX bundles")
    assert_clean_error(run_cli("demo", "web", bundle, "--port", "70000"), r"port must be an integer from 0 to 65535")


def test_missing_node_modules_says_how_to_install(bundle, tmp_path):
    from edgekit.demo import PAGE_FILES, make_server
    from edgekit.errors import UserError

    web = tmp_path / "web_demo"
    web.mkdir()
    for name in PAGE_FILES:
        shutil.copy(WEB / name, web / name)
    with pytest.raises(UserError, match=r"onnxruntime-web is not installed .*npm ci --prefix web_demo"):
        make_server(bundle, port=0, web_root=web)


# ---------------------------------------------------------------------------------------------
# End to end in Chromium


class DemoProcess:
    """``edgekit demo web BUNDLE --port 0`` in a subprocess; ``url`` is read from what it prints."""

    def __init__(self, bundle: Path):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "demo", "web", str(bundle), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            line = ""
        if " at http://" not in line:
            self.close()
            raise AssertionError(f"`edgekit demo web` did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line.split(" at ", 1)[1].split()[0]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_page(bundle: Path, runs: list[dict], tmp_path: Path, screenshot: Path | None = None) -> dict:
    """Drive the page served by ``edgekit demo web bundle`` through ``runs``; the e2e script's report."""
    cases, out = tmp_path / f"cases-{bundle.name}.json", tmp_path / f"results-{bundle.name}.json"
    cases.write_text(json.dumps({"runs": runs}, ensure_ascii=False), encoding="utf-8")
    server = DemoProcess(bundle)
    try:
        args = ["node", str(WEB / "tools" / "e2e.mjs"), "--url", server.url, "--cases", str(cases), "--out", str(out),
                "--chromium", CHROMIUM, "--timeout-ms", "30000"]
        if screenshot is not None:
            args += ["--screenshot", str(screenshot)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    report = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    assert proc.returncode == 0 and not report.get("error"), (proc.returncode, report.get("error"), proc.stderr[-3000:])
    assert not report["page_errors"] and not report["console_errors"], report
    assert not report["failed_requests"], report["failed_requests"]
    return report


def reference(predictor, text: str, run: dict):
    """edgekit_device's prediction for one text with the run's settings (one text at a time, as the page)."""
    if run["mode"] == "fixed":
        return predictor.predict([text], exit_layer=run["exit_layer"])
    kwargs = {"patience": run["patience"]} if run["mode"] == "patience" else {"entropy_threshold": run["entropy"]}
    return predictor.predict([text], mode=run["mode"], max_layer=run.get("exit_layer"), **kwargs)


def assert_page_matches(predictor, runs: list[dict], report: dict) -> list[dict]:
    """Every typed text: the page's ids, label, exit layer and scores are the Python runtime's."""
    rows = []
    assert [r["name"] for r in report["runs"]] == [r["name"] for r in runs]
    for run, page_run in zip(runs, report["runs"]):
        assert len(page_run["results"]) == len(run["texts"])
        for text, result in zip(run["texts"], page_run["results"]):
            where = f"{run['name']}: {text!r}"
            shown, page = result["shown"], result["json"]
            assert shown["state"] == "done", (where, shown)
            assert shown["text"] == text and page["text"] == text, where
            expected = reference(predictor, text, run)
            ids, _ = predictor.encode([text])
            assert page["ids"] == ids[0].tolist(), where
            assert page["label"] == expected.labels[0] and shown["label"] == expected.labels[0], where
            assert page["exit_layer"] == int(expected.exit_layers[0]), where
            assert shown["exit"].startswith(f"{page['exit_layer']} of {predictor.depth}"), (where, shown["exit"])
            np.testing.assert_allclose(page["scores"], expected.scores[0], rtol=0, atol=TOL, err_msg=where)
            np.testing.assert_allclose(page["logits"], expected.logits[0], rtol=0, atol=TOL, err_msg=where)
            # What the page shows: every label's score to 4 decimals.
            assert [name for name, _ in shown["scores"]] == predictor.labels, where
            np.testing.assert_allclose([s for _, s in shown["scores"]], expected.scores[0], rtol=0, atol=TOL + 5e-5,
                                       err_msg=where)
            assert page["latency_ms"] >= 0 and shown["latency"].endswith("ms")
            rows.append({"run": run["name"], "label": page["label"], "exit": page["exit_layer"]})
    return rows


def entropy_threshold(predictor, texts, depth: int) -> float:
    """A threshold between two of the texts' per-layer entropies, far (> 1e-3) from all of them,
    so that some texts exit early and others do not, whatever the float rounding."""
    from edgekit_device.runtime import prediction_entropy

    values = []
    for text in texts:
        ids, mask = predictor.encode([text])
        values.extend(prediction_entropy(predictor.exit_logits(ids, mask, depth)[:-1, 0]).tolist())
    values = np.sort(values)
    gaps = [(values[i + 1] - values[i], i) for i in range(len(values) // 4, 3 * len(values) // 4)]
    gap, i = max(gaps)
    assert gap > 2e-3, values
    return float(round((values[i] + values[i + 1]) / 2, 6))


def test_page_matches_python_runtime(chromium, bundle, fixed_bundle, tmp_path):
    """Typed texts in Chromium give edgekit_device's label, exit layer and scores (1e-4), for
    fixed exits 1, 2 and 4 and dynamic exits (PABEE patience 1; DeeBERT entropy) of the per-layer
    bundle, and for the fixed bundle's one exit (its dynamic modes disabled)."""
    import edgekit_device

    predictor = edgekit_device.Predictor(bundle, threads=1)
    depth = predictor.depth
    runs = [
        {"name": "fixed-1", "mode": "fixed", "exit_layer": 1, "texts": TEXTS[:3]},
        {"name": "fixed-2", "mode": "fixed", "exit_layer": 2, "texts": TEXTS[3:]},
        {"name": "fixed-4", "mode": "fixed", "exit_layer": depth, "texts": TEXTS},
        {"name": "patience-1", "mode": "patience", "exit_layer": depth, "patience": 1, "texts": TEXTS},
        {"name": "entropy", "mode": "entropy", "exit_layer": depth,
         "entropy": entropy_threshold(predictor, TEXTS, depth), "texts": TEXTS[::-1], "screenshot": True},
    ]
    screenshot = tmp_path / "screenshot.png"
    report = run_page(bundle, runs, tmp_path, screenshot)
    assert report["controls"]["exit_layers"] == list(range(1, depth + 1))
    assert not any(m["disabled"] for m in report["controls"]["modes"])
    assert "sha256 checked" in report["info"]["bundle"]["download"]
    rows = assert_page_matches(predictor, runs, report)
    # The checks mean something: labels differ between texts, and dynamic exits stop at different layers.
    assert len({r["label"] for r in rows}) >= 2, rows
    for name in ("patience-1", "entropy"):
        assert len({r["exit"] for r in rows if r["run"] == name}) >= 2, rows
    assert screenshot.is_file() and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("EDGEKIT_WEB_DEMO_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["EDGEKIT_WEB_DEMO_SCREENSHOT"])

    fixed = edgekit_device.Predictor(fixed_bundle, threads=1)
    fixed_runs = [{"name": "fixed-bundle", "mode": "fixed", "exit_layer": 2, "texts": TEXTS[:4]}]
    fixed_report = run_page(fixed_bundle, fixed_runs, tmp_path)
    assert fixed_report["controls"]["exit_layers"] == [2]
    assert {m["value"]: m["disabled"] for m in fixed_report["controls"]["modes"]} == {
        "fixed": False, "patience": True, "entropy": True}
    assert_page_matches(fixed, fixed_runs, fixed_report)


def test_page_matches_python_runtime_int8(chromium, int8_bundle, tmp_path):
    """The same for an int8 bundle: onnxruntime-web's integer kernels give the scores of
    onnxruntime's (1e-4), at a fixed and a dynamic exit."""
    import edgekit_device

    predictor = edgekit_device.Predictor(int8_bundle, threads=1)
    assert predictor.bundle.manifest["precision"] == "int8"
    runs = [{"name": "int8-fixed-3", "mode": "fixed", "exit_layer": 3, "texts": TEXTS[:3]},
            {"name": "int8-patience-1", "mode": "patience", "exit_layer": predictor.depth, "patience": 1,
             "texts": TEXTS[3:]}]
    assert_page_matches(predictor, runs, run_page(int8_bundle, runs, tmp_path))


def test_page_matches_python_runtime_mean_pooling(chromium, mean_bundle, tmp_path):
    """A mean-pooled bundle: the page feeds the head the attention mask, and gives edgekit_device's
    label, exit layer and scores (1e-4) at fixed and dynamic exits."""
    import edgekit_device

    predictor = edgekit_device.Predictor(mean_bundle, threads=1)
    assert predictor.bundle.pooling == "mean"
    assert [t["name"] for t in predictor.graphs["head"]["inputs"]] == ["hidden", "attention_mask"]
    runs = [{"name": "mean-fixed-2", "mode": "fixed", "exit_layer": 2, "texts": TEXTS},
            {"name": "mean-patience-1", "mode": "patience", "exit_layer": predictor.depth, "patience": 1,
             "texts": TEXTS}]
    assert_page_matches(predictor, runs, run_page(mean_bundle, runs, tmp_path))
    # The comparison means something: the texts' scores differ (a mean head smooths them, so
    # they may all share a label).
    scores = predictor.predict(TEXTS, exit_layer=2).scores
    assert float(np.ptp(scores, axis=0).max()) > 1e-2, scores


# ---------------------------------------------------------------------------------------------
# The packed download (.edgepack, zlib), decoded by the page itself


def test_page_runs_the_packed_download(chromium, int8_bundle, tmp_path):
    """`edgekit demo web BUNDLE.edgepack` serves only the pack; the page downloads it, decodes it
    (DecompressionStream, sparse tensors spliced back, sha256 against the pack and the manifest) and
    gives edgekit_device's label, exit layer and scores, as from the directory."""
    import edgekit_device

    pack = tmp_path / "int8.edgepack"
    edgekit_device.pack(int8_bundle, pack)  # the default codec: zlib
    predictor = edgekit_device.Predictor(int8_bundle, threads=1)
    runs = [{"name": "packed-fixed-2", "mode": "fixed", "exit_layer": 2, "texts": TEXTS[:3]},
            {"name": "packed-patience-1", "mode": "patience", "exit_layer": predictor.depth, "patience": 1,
             "texts": TEXTS[3:]}]
    report = run_page(pack, runs, tmp_path)
    shown = report["info"]["bundle"]["download"]
    assert "packed (.edgepack, decoded here)" in shown and "sha256 checked" in shown, shown
    assert_page_matches(predictor, runs, report)


def test_demo_serves_only_the_pack_and_refuses_xz(node_modules, bundle, tmp_path):
    import edgekit_device

    from edgekit.demo import start_in_thread

    pack = tmp_path / "b.edgepack"
    edgekit_device.pack(bundle, pack, codec="zlib")
    server = start_in_thread(pack)
    try:
        assert server.url.endswith("/?pack=bundle.edgepack")
        status, content_type, body = get(server.url.split("?")[0], "/bundle.edgepack")
        assert (status, content_type, body) == (200, "application/octet-stream", pack.read_bytes())
        for path in ("/bundle/manifest.json", "/bundle/layer.onnx", "/b.edgepack"):
            assert get(server.url.split("?")[0], path)[0] == 404, path
    finally:
        server.shutdown()
        server.server_close()
    edgekit_device.pack(bundle, tmp_path / "x.edgepack", codec="xz")
    assert_clean_error(run_cli("demo", "web", tmp_path / "x.edgepack", "--port", "0"),
                       r"is compressed with xz, and the browser decodes zlib packs; pack it again")


UNPACK_JS = """
import { unpackEdgePack } from "%s";
import { readFileSync } from "node:fs";
const out = {};
for (const file of process.argv.slice(1)) {
  try {
    const files = await unpackEdgePack(new Uint8Array(readFileSync(file)));
    out[file] = {files: Object.fromEntries([...files].map(([k, v]) => [k, Buffer.from(v).toString("base64")]))};
  } catch (e) {
    out[file] = {error: `${e.constructor.name}: ${e.message}`};
  }
}
console.log(JSON.stringify(out));
"""


def test_js_unpack_is_bit_exact_and_refuses_bad_packs(node, int8_bundle, tmp_path):
    """runtime.js's unpackEdgePack (Node has DecompressionStream and crypto.subtle too): every file
    of a real pack byte for byte, and damaged or hostile packs refused with one BundleError sentence."""
    import base64
    import struct

    import edgekit_device

    good = tmp_path / "good.edgepack"
    edgekit_device.pack(int8_bundle, good)
    blob = good.read_bytes()
    size = struct.unpack_from("<I", blob, 8)[0]
    header = json.loads(blob[12:12 + size])

    def with_header(h):
        raw = json.dumps(h).encode()
        return blob[:8] + struct.pack("<I", len(raw)) + raw + blob[12 + size:]

    whole = next(i for i, f in enumerate(header["files"]) if f["encoding"] == "whole")
    bad = {"flipped": (blob[:-40] + bytes([blob[-40] ^ 0x55]) + blob[-39:], "corrupted"),
           "truncated": (blob[:-16], "malformed"),
           "foreign": (b"PK\x03\x04" + blob[4:], "not a packed edgekit bundle"),
           "escape": (with_header({**header, "files": [{**f, "name": "../x"} if i == whole else f
                                                       for i, f in enumerate(header["files"])]}),
                      "outside a plain relative path"),
           "bomb": (with_header({**header, "files": [{**f, "bytes": 1 << 30} if i == whole else f
                                                     for i, f in enumerate(header["files"])],
                                 "streams": [{**s, "raw_bytes": 1 << 30} if i == header["files"][whole]["stream"]
                                             else s for i, s in enumerate(header["streams"])]}),
                    "more than this page accepts")}
    paths = [good]
    for name, (data, _) in bad.items():
        (tmp_path / f"{name}.edgepack").write_bytes(data)
        paths.append(tmp_path / f"{name}.edgepack")
    edgekit_device.pack(int8_bundle, tmp_path / "xz.edgepack", codec="xz")
    paths.append(tmp_path / "xz.edgepack")
    script = UNPACK_JS % (WEB / "runtime.js").as_uri()
    proc = subprocess.run(["node", "--input-type=module", "-e", script, *map(str, paths)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    files = result[str(good)]["files"]
    expected = {p.name for p in int8_bundle.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert set(files) == expected
    for name, data in files.items():
        assert base64.b64decode(data) == (int8_bundle / name).read_bytes(), name
    for name, (_, fragment) in bad.items():
        error = result[str(tmp_path / f"{name}.edgepack")].get("error", "")
        assert error.startswith("BundleError: ") and fragment in error, (name, error)
    assert "the browser reads zlib packs" in result[str(tmp_path / "xz.edgepack")]["error"]


def test_bundle_pack_command_writes_zlib_and_keeps_existing_files(bundle, tmp_path):
    """`edgekit bundle pack`: zlib by default (what the page and the phone decode), a pack that
    unpacks to the bundle, never over an existing pack without --overwrite."""
    import edgekit_device
    from edgekit_device.pack import read_pack

    served = tmp_path / "b"
    shutil.copytree(bundle, served)
    proc = run_cli("bundle", "pack", served)
    assert proc.returncode == 0, proc.stderr
    pack = tmp_path / "b.edgepack"
    assert f"packed {served} into {pack} (" in proc.stdout and ", zlib;" in proc.stdout
    header, _ = read_pack(pack)
    assert {s["codec"] for s in header["streams"]} == {"zlib"}
    restored = edgekit_device.unpack(pack, tmp_path / "restored")
    assert (restored / "layer.onnx").read_bytes() == (bundle / "layer.onnx").read_bytes()
    assert_clean_error(run_cli("bundle", "pack", served), r"already exists and holds a packed bundle .* --overwrite")
    assert_clean_error(run_cli("bundle", "pack", pack), r"is a packed bundle; restore it with `edgekit bundle unpack")
    assert run_cli("bundle", "pack", served, "--codec", "xz", "--overwrite").returncode == 0
    assert {s["codec"] for s in read_pack(pack)[0]["streams"]} == {"xz"}
