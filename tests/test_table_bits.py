"""``edgekit export --embedding-bits``: the word-embedding table on 2^b-1 levels (``quantize/table_bits.py``).

The snapping by hand; then a tiny int8 ONNX bundle at 4 bits: at most 15 int8 codes per row, a
smaller pack than at 8 bits, the bits in the manifest, the checkpoint on disk untouched, and a
parity gate that still judges against the original checkpoint (it passes a loose gate and fails a
strict one that the 8-bit bundle passes); bad values are one sentence.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from conftest import clue_sentences, invoke_cli
from edgekit.errors import UserError
from edgekit.quantize.table_bits import DEFAULT_SCALE, SCALES, check_bits, snap_facts, snap_levels

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# --- the math, by hand ------------------------------------------------------------------------

TABLE = np.array([[0.7, -0.33, 0.0, 0.12],
                  [0.0, 0.02, -1.4, 0.45]], dtype=np.float32)


def test_snap_per_row_by_hand():
    # bits 4: L = 7; row 0: step 0.7/7 = 0.1 -> codes 7, -3.3->-3, 0, 1.2->1; row 1: step 1.4/7 = 0.2 ->
    # codes 0, 0.1->0 (a new zero), -7, 2.25->2
    got = snap_levels(TABLE, 4, "row")
    np.testing.assert_allclose(got, [[0.7, -0.3, 0.0, 0.1], [0.0, 0.0, -1.4, 0.4]], atol=1e-6)
    assert got[0, 2] == 0.0 and got[1, 0] == 0.0  # pruned zeros stay exactly zero
    # error: row 0 (0, .03, 0, .02), row 1 (0, .02, 0, .05): sqrt(.0042 / 2.7762) = 0.03890
    facts = snap_facts(TABLE, got, 4, "row")
    assert facts == {"bits": 4, "levels_per_row": 15, "step_per": "row",
                     "relative_error": pytest.approx(0.0389, abs=1e-4), "newly_zero": 1}
    # bits 2: L = 1, step = the row's max: only -m, 0, m survive
    np.testing.assert_allclose(snap_levels(TABLE, 2, "row"), [[0.7, 0, 0, 0], [0, 0, -1.4, 0]], atol=1e-6)


def test_snap_per_table_by_hand():
    # bits 3: L = 3, one step for the table: 1.4/3 = 0.4667; 0.7 -> 1.5 -> 2 (half to even) -> 0.9333,
    # -0.33 -> -0.707 -> -1, 0.12 -> 0.257 -> 0, 0.02 -> 0, -1.4 -> -3, 0.45 -> 0.964 -> 1
    s = 1.4 / 3
    np.testing.assert_allclose(snap_levels(TABLE, 3, "table"), [[2 * s, -s, 0, 0], [0, 0, -3 * s, s]], atol=1e-6)


def test_eight_bits_is_a_no_op_and_zero_rows_stay_zero():
    table = np.vstack([TABLE, np.zeros((1, 4), np.float32)])
    assert np.array_equal(snap_levels(table, 8), table)
    for scope in ("row", "table"):
        assert np.array_equal(snap_levels(table, 4, scope)[2], np.zeros(4))
    assert SCALES == ("table", "row") and DEFAULT_SCALE == "table"  # --embedding-scale: the step follows it


@pytest.mark.parametrize("bits", [1, 9, 4.0, True, "4"])
def test_bits_outside_2_to_8_are_one_sentence(bits):
    with pytest.raises(UserError) as info:
        check_bits(bits)
    message = str(info.value)
    assert message.startswith("embedding bits must be an integer from 2 to 8") and f"got {bits!r}." in message
    assert "\n" not in message and message.count(". ") == 0


# --- a real export ----------------------------------------------------------------------------


cli = invoke_cli  # conftest: edgekit ARGS in this process


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tiny_classifier, tmp_path_factory):
    """The tiny classifier as a packed int8 ONNX bundle at 8 bits (strict gate) and at 4 bits (CLI, loose gate)."""
    from edgekit.export import export_model

    root = tmp_path_factory.mktemp("table-bits")
    samples = root / "samples.txt"
    samples.write_text("\n".join(clue_sentences(64)) + "\n", encoding="utf-8")
    weights = tiny_classifier / "model.safetensors"
    before = sha256(weights)
    b8 = export_model(tiny_classifier, root / "b8", int8="dynamic", max_length=32, pack=True, min_agreement=1.0,
                      sample_texts=clue_sentences(64))
    code, stdout, stderr = cli("export", tiny_classifier, "--out", root / "b4", "--int8", "dynamic", "--max-length", 32,
                               "--samples", samples, "--embedding-bits", 4, "--min-agreement", 0.9, "--pack")
    assert code == 0, stderr
    return {"root": root, "samples": samples, "b8": b8, "b4": root / "b4", "stdout": stdout,
            "weights_before": before, "weights_after": sha256(weights)}


def word_table(bundle) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    tables = [numpy_helper.to_array(i) for i in onnx.load(str(bundle / "embed.onnx")).graph.initializer
              if i.name.endswith("_quantized") and i.data_type == onnx.TensorProto.INT8 and i.dims[0] > 20000]
    assert len(tables) == 1
    return tables[0]


def test_four_bit_table_has_at_most_15_codes_per_row_and_packs_smaller(exported):
    q8, q4 = word_table(exported["b8"]), word_table(exported["b4"])
    assert q4.shape == q8.shape == (21128, 16)
    assert max(len(np.unique(row)) for row in q4) <= 15
    assert len(np.unique(q4)) <= 15  # ONNX: one step for the table, as its one int8 scale
    assert len(np.unique(q8)) > 100  # measured 184: the 8-bit table is not already coarse
    assert np.array_equal(q4 == 0, q8 == 0)  # the pruning mask survives (no weight of this table became zero)
    size8 = (exported["root"] / "b8.edgepack").stat().st_size
    size4 = (exported["root"] / "b4.edgepack").stat().st_size
    assert size4 < 0.85 * size8  # measured 254,214 vs 326,095 bytes


def test_manifest_and_report_record_the_bits_and_the_checkpoint_is_untouched(exported):
    m8 = json.loads((exported["b8"] / "manifest.json").read_text())
    m4 = json.loads((exported["b4"] / "manifest.json").read_text())
    assert m8["quantization"]["embedding_bits"] == 8 and "embedding_snap" not in m8["quantization"]
    q = m4["quantization"]
    assert q["embedding_bits"] == 4
    assert q["embedding_snap"]["levels_per_row"] == 15 and q["embedding_snap"]["step_per"] == "table"
    assert 0.0 < q["embedding_snap"]["relative_error"] < 0.3  # measured 0.146
    assert "int8 (word-embedding table at 4 bits) per-layer" in exported["stdout"]
    assert exported["weights_after"] == exported["weights_before"]


def test_parity_judges_the_four_bit_bundle_against_the_original_checkpoint(exported, tiny_classifier):
    p8 = json.loads((exported["b8"] / "manifest.json").read_text())["parity"]
    p4 = json.loads((exported["b4"] / "manifest.json").read_text())["parity"]
    # 8 bits passed the strict gate; at 4 bits the gate sees the snapping (against the snapped copy it would not)
    assert p8["min_agreement"] == 1.0 and p8["agreement"] == 1.0
    assert p4["min_agreement"] == 0.9 and 0.9 <= p4["agreement"] < 1.0  # measured 0.953
    assert p4["max_abs_diff"] > 2 * p8["max_abs_diff"]
    out = exported["root"] / "strict"
    code, _, stderr = cli("export", tiny_classifier, "--out", out, "--int8", "dynamic", "--max-length", 32,
                          "--samples", exported["samples"], "--embedding-bits", 4, "--min-agreement", 1.0)
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "the exported int8 bundle changes the PyTorch model's predictions" in lines[0]
    assert "below the int8 threshold 100.0%, so no bundle was written" in lines[0]
    assert lines[0].endswith("or raise --embedding-bits above 4 (each row of the word-embedding table is on 15 "
                             "levels now).")
    assert not out.exists()


@pytest.mark.parametrize("args, sentence", [
    (("--int8", "dynamic", "--embedding-bits", 9), "embedding bits must be an integer from 2 to 8 (8: the table "
                                                   "stays as int8 export stores it), got 9."),
    (("--embedding-bits", 4), "--embedding-bits applies to int8 bundles (an fp32 table stores 32 bits per weight "
                              "whatever its levels); add --int8 or drop --embedding-bits."),
])
def test_bad_bits_are_one_sentence_and_write_nothing(tiny_classifier, tmp_path, args, sentence):
    code, _, stderr = cli("export", tiny_classifier, "--out", tmp_path / "b", *args)
    assert code == 2 and stderr == f"error: {sentence}\n", stderr
    assert list(tmp_path.iterdir()) == []


def test_recipe_key_is_checked_before_anything_runs_and_leaves_old_fingerprints_alone(tmp_path):
    from edgekit.pipeline import load_pipeline_config
    from edgekit.pipeline.plan import plan

    assert load_pipeline_config(None, {}).export.embedding_bits == 8
    assert load_pipeline_config(None, {"export": {"embedding_bits": 4}}).export.embedding_bits == 4
    with pytest.raises(UserError, match=r"^export.embedding_bits must be an integer from 2 to 8 .*got 9\.$"):
        load_pipeline_config(None, {"export": {"embedding_bits": 9}})
    with pytest.raises(UserError, match=r"^export.embedding_bits applies to int8 bundles; set export.int8"):
        load_pipeline_config(None, {"export": {"embedding_bits": 4, "int8": "none"}})
    # the default is left out of the export stage's fingerprinted config: bundles made before the key stay done
    configs = {bits: {s.name: s.config for s in plan(load_pipeline_config(None, {"export": {"embedding_bits": bits}}),
                                                    tmp_path) if s.kind == "export"} for bits in (8, 4)}
    assert configs[8] and all("embedding_bits" not in c["export"] for c in configs[8].values())
    assert all(c["export"]["embedding_bits"] == 4 for c in configs[4].values())
    assert any(name.startswith("phone/") for name in configs[4])  # the phone app's TFLite bundle gets it too
