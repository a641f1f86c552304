"""edgekit-device as its own distribution (``export/pyproject.toml``): torch-free by construction.

The package's source imports no torch, transformers or edgekit; installed alone into a fresh venv
(where ``import torch`` fails) it runs a bundle to the same logits as in the main environment; the
TFLite engine is an optional extra whose absence is a one-sentence ``BundleError``.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, clue_sentences
from edgekit.export import export_model
from edgekit_device import BundleError, Predictor
from edgekit_device.tflite_backend import TFLiteBackend

PACKAGE = ROOT / "export" / "edgekit_device"
FORBIDDEN = ("torch", "transformers", "edgekit")

# What pip prints when it cannot reach an index; any other failure of the install is a real failure.
NO_INDEX = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
            "Name or service not known", "Network is unreachable", "ConnectTimeoutError", "ProxyError",
            "Could not fetch URL")

INSTALL_EXTRA = r"pip install 'edgekit-device\[tflite\]'"


def forbidden_imports(package: Path) -> list[str]:
    """``file:line: module`` for every import of torch, transformers or edgekit (top-level or
    lazy, inside a function) in the package's .py files; relative imports are the package's own."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            found += [f"{path.name}:{node.lineno}: {m}" for m in modules if m.split(".")[0] in FORBIDDEN]
    return found


def test_device_package_imports_no_torch_transformers_or_edgekit():
    assert sorted(p.name for p in PACKAGE.glob("*.py"))  # the scan sees the package
    assert forbidden_imports(PACKAGE) == []


def test_forbidden_import_scan_reports_an_offending_file(tmp_path):
    (tmp_path / "ok.py").write_text("import json\nimport numpy as np\nimport edgekit_device\nfrom . import errors\n")
    (tmp_path / "bad.py").write_text(textwrap.dedent("""\
        import numpy, torch.nn
        from edgekit.export import export_model

        def lazy():
            from transformers import AutoModel
    """))
    assert forbidden_imports(tmp_path) == ["bad.py:1: torch.nn", "bad.py:2: edgekit.export", "bad.py:5: transformers"]


def test_missing_tflite_extra_is_one_sentence_naming_the_extra(tmp_path, monkeypatch):
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # as if ai-edge-litert were not installed
    with pytest.raises(BundleError, match=INSTALL_EXTRA) as e:
        TFLiteBackend(tmp_path / "model.tflite")
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")


@pytest.mark.slow
def test_edgekit_device_installs_alone_and_runs_a_bundle_without_torch(tiny_classifier, tmp_path):
    started = time.monotonic()
    # Install from a copy: an in-tree build would leave build/ in the checkout, whose stale files
    # could end up in a later wheel.
    source = tmp_path / "export"
    shutil.copytree(ROOT / "export", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}

    def run(*args, **kw):
        return subprocess.run([str(python), *args], capture_output=True, text=True, env=env, cwd=tmp_path, **kw)

    pip = run("-m", "pip", "install", "--disable-pip-version-check", "-q", str(source), timeout=600)
    if pip.returncode != 0:
        output = pip.stdout + pip.stderr
        unreachable = [line.strip() for line in output.splitlines() if any(m in line for m in NO_INDEX)]
        if unreachable:
            pytest.skip(f"pip cannot reach a package index to install edgekit-device and its dependencies "
                        f"into a fresh venv: {unreachable[-1][:300]}")
        pytest.fail(f"pip install ./export failed:\n{output[-3000:]}")

    texts = clue_sentences(24)
    bundle = export_model(tiny_classifier, tmp_path / "bundle", sample_texts=texts[:16])
    no_torch = run("-c", "import torch", timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, no_torch.stderr

    (tmp_path / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    script = textwrap.dedent("""
        import json, sys
        import edgekit_device
        from edgekit_device import BundleError, Predictor, get_backend

        bundle, texts = sys.argv[1], json.loads(open(sys.argv[2], encoding="utf-8").read())
        r = Predictor(bundle).predict(texts)
        try:  # what loading a TFLite bundle does first; ai-edge-litert is an extra, not installed here
            get_backend("tflite").load(bundle, {"graphs": {"model": {"file": "model.tflite"}}})
            tflite = None
        except BundleError as e:
            tflite = str(e)
        print(json.dumps({"file": edgekit_device.__file__, "logits": r.logits.tolist(), "labels": r.labels,
                          "tflite": tflite,
                          "loaded": sorted(m for m in ("torch", "transformers", "edgekit") if m in sys.modules)}))
    """)
    proc = run("-c", script, str(bundle), str(tmp_path / "texts.json"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    assert Path(out["file"]).is_relative_to(venv)  # the installed copy, not the checkout's
    assert out["loaded"] == []
    expected = Predictor(bundle).predict(texts)
    assert np.allclose(np.array(out["logits"]), expected.logits, rtol=0, atol=1e-6)
    assert out["labels"] == expected.labels
    assert out["tflite"] is not None and out["tflite"].count(". ") == 0
    assert "ai-edge-litert" in out["tflite"] and "pip install 'edgekit-device[tflite]'" in out["tflite"]
    print(f"fresh venv + pip install ./export + run: {time.monotonic() - started:.1f} s")
