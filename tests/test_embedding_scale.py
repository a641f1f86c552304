"""``edgekit export --embedding-scale table|row``: one int8 scale for the word-embedding table (the
default, in TFLite as in ONNX) or one per row (TFLite only).

Three tiny TFLite dynamic-int8 bundles (about 6 s each): the default (one scale, equal to
max |W| / 127 of the checkpoint's table), ``row`` through the CLI (one scale per row), and 4 bits
at the default scale (at most 15 codes over the whole table); each passes its parity gate. Then the
refusals, one sentence each and nothing written, and the recipe key.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import clue_sentences, invoke_cli
from edgekit.errors import UserError
from edgekit.quantize.table_bits import check_scale

pytestmark = pytest.mark.usefixtures("single_torch_thread")
VOCAB_ROWS = 21128  # bert-base-chinese: the tiny classifier's word-embedding table is (21128, 16)


cli = invoke_cli  # conftest: edgekit ARGS in this process


@pytest.fixture(scope="module")
def bundles(tiny_classifier, tmp_path_factory):
    from edgekit.export import export_model

    root = tmp_path_factory.mktemp("embedding-scale")
    texts = clue_sentences(64)
    samples = root / "samples.txt"
    samples.write_text("\n".join(texts) + "\n", encoding="utf-8")
    # a loose gate: dynamic int8 activations move this tiny std-0.2 model's near-ties at either scale
    common = {"format": "tflite", "int8": "dynamic", "max_length": 16, "sample_texts": texts, "min_agreement": 0.9}
    table = export_model(tiny_classifier, root / "table", pack=True, **common)
    code, stdout, stderr = cli("export", tiny_classifier, "--out", root / "row", "--format", "tflite", "--int8",
                               "dynamic", "--max-length", 16, "--samples", samples, "--embedding-scale", "row",
                               "--min-agreement", 0.9, "--pack")
    assert code == 0, stderr
    four = export_model(tiny_classifier, root / "four", embedding_bits=4, **common)
    return {"table": table, "row": root / "row", "four": four, "row_stdout": stdout}


def word_table(bundle):
    """(int8 codes, scales, quantized dimension) of the embed graph's word-embedding table, read by LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(bundle / "embed.tflite"))
    interpreter.allocate_tensors()
    found = [d for d in interpreter.get_tensor_details() if list(d["shape"]) == [VOCAB_ROWS, 16]]
    assert len(found) == 1, [d["name"] for d in found]
    d = found[0]
    assert d["dtype"] == np.int8
    q = d["quantization_parameters"]
    return interpreter.get_tensor(d["index"]), q["scales"], q["quantized_dimension"]


def checkpoint_table(model_dir) -> np.ndarray:
    from safetensors.numpy import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    (name,) = [k for k in weights if k.endswith("word_embeddings.weight")]
    return weights[name]


def manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_default_gives_the_table_one_scale_and_row_one_per_row(bundles, tiny_classifier):
    weights = checkpoint_table(tiny_classifier)
    codes, scales, _ = word_table(bundles["table"])
    assert scales.shape == (1,)
    # symmetric int8: the one scale is max |W| / 127 over the whole table
    assert scales[0] == pytest.approx(np.abs(weights).max() / 127, rel=1e-5)
    np.testing.assert_allclose(codes * scales[0], weights, atol=scales[0] / 2 + 1e-7)

    row_codes, row_scales, axis = word_table(bundles["row"])
    assert row_scales.shape == (VOCAB_ROWS,) and axis == 0
    np.testing.assert_allclose(row_scales, np.abs(weights).max(axis=1) / 127, rtol=1e-5, atol=1e-10)  # 0-rows: ~0
    live = np.abs(weights).max(axis=1) > 0  # every other row fills the int8 range: why per row packs larger
    assert live.sum() > VOCAB_ROWS * 0.99 and (np.abs(row_codes[live]).max(axis=1) == 127).all()
    # the per-row bundle carries a float32 scale and an int64 zero point per row more
    extra = (bundles["row"] / "embed.tflite").stat().st_size - (bundles["table"] / "embed.tflite").stat().st_size
    assert extra >= 0.99 * VOCAB_ROWS * (4 + 8)  # measured 253,520 bytes; packed 380,519 vs 298,941
    assert bundles["row"].with_suffix(".edgepack").stat().st_size > \
        bundles["table"].with_suffix(".edgepack").stat().st_size + VOCAB_ROWS * 4 * 0.8


@pytest.mark.slow
def test_manifest_and_report_record_the_scale_and_both_pass_parity(bundles):
    table, row = manifest(bundles["table"]), manifest(bundles["row"])
    assert table["quantization"]["embedding_scale"] == "table"
    assert row["quantization"]["embedding_scale"] == "row"
    for m in (table, row):  # every exit, against the checkpoint (measured 0.984 and 0.953)
        assert m["parity"]["min_agreement"] == 0.9 and m["parity"]["agreement"] >= 0.9
        assert 0 < m["parity"]["max_abs_diff"] < 0.2
    assert "tflite int8 (one int8 scale per table row) per-layer" in bundles["row_stdout"]


@pytest.mark.slow
def test_four_bits_at_the_table_scale_use_at_most_15_codes_over_the_whole_table(bundles):
    codes, scales, _ = word_table(bundles["four"])
    assert scales.shape == (1,)
    assert len(np.unique(codes)) <= 15  # not only per row: one step for the table, as its one scale
    q = manifest(bundles["four"])["quantization"]
    assert q["embedding_bits"] == 4 and q["embedding_scale"] == "table"
    assert q["embedding_snap"]["step_per"] == "table"
    eight, _, _ = word_table(bundles["table"])
    assert len(np.unique(eight)) > 100  # measured 152: the 8-bit table is not already coarse


# --- refusals and the recipe key --------------------------------------------------------------


@pytest.mark.parametrize("args, sentence", [
    (("--int8", "dynamic", "--embedding-scale", "row"),
     "--embedding-scale row needs TFLite (onnxruntime's int8 Gather has one scale per table); use --format tflite "
     "or --embedding-scale table."),
    (("--format", "tflite", "--embedding-scale", "row"),
     "--embedding-scale row applies to int8 bundles (an fp32 table has no int8 scale); add --int8 or drop "
     "--embedding-scale."),
])
def test_row_where_it_cannot_apply_is_one_sentence_and_writes_nothing(tiny_classifier, tmp_path, args, sentence):
    code, _, stderr = cli("export", tiny_classifier, "--out", tmp_path / "b", "--pack", *args)
    assert code == 2 and stderr == f"error: {sentence}\n", stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_scale_values_are_one_sentence(tiny_classifier, tmp_path):
    with pytest.raises(UserError, match=r"^embedding scale must be one of table, row \(.*\), got 'column'\.$"):
        check_scale("column")
    assert check_scale("row", "tflite") == "row" and check_scale("table", "onnx") == "table"
    code, _, stderr = cli("export", tiny_classifier, "--out", tmp_path / "b", "--embedding-scale", "column")
    assert code == 2 and "Invalid value for '--embedding-scale'" in stderr and "Traceback" not in stderr
    from edgekit.export.tflite import quantize_tflite

    with pytest.raises(UserError, match=r"^embedding_scale must be one of table, row, got 'column'\.$"):
        quantize_tflite(b"", "dynamic", embedding_scale="column")


def test_recipe_key_is_checked_at_load_and_fingerprints_only_what_changed(tmp_path):
    from edgekit.pipeline import load_pipeline_config
    from edgekit.pipeline.plan import plan

    assert load_pipeline_config(None, {}).export.embedding_scale == "table"
    tflite_row = {"export": {"format": "tflite", "embedding_scale": "row"}}
    assert load_pipeline_config(None, tflite_row).export.embedding_scale == "row"
    with pytest.raises(UserError, match=r"^export.embedding_scale: row needs TFLite .*set export.format: tflite or "
                                        r"export.embedding_scale: table\.$"):
        load_pipeline_config(None, {"export": {"embedding_scale": "row"}})  # format onnx, the default
    with pytest.raises(UserError, match=r"^export.embedding_scale: row applies to int8 bundles; set export.int8"):
        load_pipeline_config(None, {"export": {"format": "tflite", "int8": "none", "embedding_scale": "row"}})

    def configs(overrides):
        return {s.name: s.config["export"] for s in plan(load_pipeline_config(None, overrides), tmp_path)
                if s.kind == "export"}

    # ONNX int8 tables always had one scale: the default leaves those bundles done; a TFLite int8
    # table had one per row before the key existed, so the phone bundle (TFLite) is redone
    default = configs({})
    assert all("embedding_scale" not in c for name, c in default.items() if name.startswith("export/"))
    assert all(c["embedding_scale"] == "table" for name, c in default.items() if name.startswith("phone/"))
    assert any(name.startswith("phone/") for name in default)
    assert all(c["embedding_scale"] == "row" for c in configs(tflite_row).values())
