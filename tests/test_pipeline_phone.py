"""The pipeline's bundle for the phone app (issue 11, "one path to the phone"): which stage writes
it for each recipe, that it is TFLite with a zlib pack (what android_demo decodes), and what the
report says. Planning only: no stage runs (the full run is in test_pipeline.py)."""

from __future__ import annotations

import pytest

from edgekit.errors import UserError
from edgekit.pipeline.config import load_pipeline_config
from edgekit.pipeline.plan import phone_stage_name, plan
from edgekit.pipeline.report import _report_markdown, phone_bundle
from test_pipeline import reviews, tiny_recipe  # noqa: F401  (reviews: the fixture)


def _plan(tiny_corpus, reviews, tmp_path, **export):  # noqa: F811
    recipe = tiny_recipe("e5-small", tiny_corpus, reviews, references=())  # a teacher is named, not resolved
    recipe["export"].pop("phone")  # the default: tflite
    recipe["export"].update(export)
    cfg = load_pipeline_config(None, recipe)
    return cfg, {s.name: s for s in plan(cfg, tmp_path / "run")}


def test_onnx_recipe_adds_a_tflite_phone_stage_packed_with_zlib(tiny_corpus, reviews, tmp_path):  # noqa: F811
    cfg, stages = _plan(tiny_corpus, reviews, tmp_path, pack_codec="xz")
    assert phone_stage_name(cfg, "jsonl") == "phone/jsonl"
    names = list(stages)
    assert names.index("export/jsonl") < names.index("phone/jsonl") < names.index("eval/bundle/jsonl")
    phone = stages["phone/jsonl"]
    assert phone.kind == "export" and phone.directory == tmp_path / "run" / "phone" / "jsonl"
    assert phone.inputs == ["finetune/jsonl"]
    e = phone.job["export"]
    assert (e.format, e.pack, e.pack_codec, e.int8) == ("tflite", True, "zlib", "dynamic")  # xz is for Python only
    assert phone.job["int8"] == "dynamic" and phone.describe == "tflite int8 dynamic bundle for the phone app"
    assert stages["export/jsonl"].job["export"].format == "onnx"
    assert stages["export/jsonl"].job["export"].pack_codec == "xz"
    # Turning the phone bundle off or on does not make the evaluated bundle stale.
    _, without = _plan(tiny_corpus, reviews, tmp_path, pack_codec="xz", phone="none")
    assert "phone/jsonl" not in without
    assert without["export/jsonl"].config == stages["export/jsonl"].config


def test_tflite_recipe_ships_its_own_bundle(tiny_corpus, reviews, tmp_path):  # noqa: F811
    cfg, stages = _plan(tiny_corpus, reviews, tmp_path, format="tflite")
    assert phone_stage_name(cfg, "jsonl") == "export/jsonl" and "phone/jsonl" not in stages
    assert stages["export/jsonl"].describe == "tflite int8 dynamic bundle for the phone app"
    assert stages["export/jsonl"].job["export"].pack_codec == "zlib"  # the default
    with pytest.raises(UserError, match=r"the app decodes zlib packs, not xz; set export.pack_codec: zlib"):
        _plan(tiny_corpus, reviews, tmp_path, format="tflite", pack_codec="xz")
    cfg, stages = _plan(tiny_corpus, reviews, tmp_path, phone="none")
    assert phone_stage_name(cfg, "jsonl") is None and not any(n.startswith("phone/") for n in stages)


def test_report_points_at_the_phone_bundle(tiny_corpus, reviews, tmp_path):  # noqa: F811
    from edgekit.io import write_json

    cfg, _ = _plan(tiny_corpus, reviews, tmp_path)
    out = tmp_path / "run"
    facts = {"bundle": str(out / "phone/jsonl/bundle"), "packed": str(out / "phone/jsonl/bundle.edgepack"),
             "packed_bytes": 1234, "format": "tflite", "precision": "int8", "layout": "per-layer",
             "sizes": {"dense_bytes": 5678}, "parity": {"agreement": 0.995}}
    (out / "phone" / "jsonl").mkdir(parents=True)
    write_json(out / "phone" / "jsonl" / "results.json", facts)
    phone = phone_bundle(cfg, out, "jsonl")
    assert phone["bundle"] == facts["bundle"] and phone["packed_bytes"] == 1234 and phone["agreement"] == 0.995
    report = {"run_dir": str(out), "teacher": "t", "tasks": ["jsonl"], "splits": {"jsonl": "dev"}, "table": "",
              "ratios": {}, "stages": [],
              "bundles": {"jsonl": {"checkpoint": "ck", **{**facts, "format": "onnx", "bundle": "b"}, "phone": phone}}}
    text = _report_markdown(report)
    assert (f"  - for the phone app: `{facts['bundle']}` (tflite int8 per-layer, 5,678 bytes; packed download "
            f"`{facts['packed']}` (1,234 bytes)), parity agreement 0.995") in text
    report["bundles"]["jsonl"]["phone"] = None
    assert "  - no phone bundle (export.phone: none)" in _report_markdown(report)
