"""`edgekit prune`: the post-distillation step on a tiny distilled student."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AlbertModel

from conftest import tiny_distill_overrides
from edgekit.distill import distill, load_distill_config
from edgekit.prune import load_prune_config, prune
from test_cli_errors import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def tiny_student(tiny_teacher, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "run"
    distill(load_distill_config(None, tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=6)), out)
    return out / "model"


def _cfg(student, **train):
    return load_prune_config(None, {
        "model": str(student),
        "prune": {"sparsity": 0.8, "frequency": 2, "end_step": 8},
        "train": {"max_steps": 10, "batch_size": 8, "save_every": 4, "log_every": 1, "lr": 1e-3, **train},
    })


def test_prune_reaches_target_and_zeros_survive_save_and_load(tiny_student, tmp_path):
    result = prune(_cfg(tiny_student), tmp_path / "p")
    out = tmp_path / "p"
    report = json.loads((out / "sparsity.json").read_text())
    pruned = [t for t in report["tensors"] if t["pruned"]]
    assert {t["name"] for t in pruned} >= {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                                            "encoder.embedding_hidden_mapping_in.weight"}
    assert not any(t["pruned"] for t in report["tensors"] if "LayerNorm" in t["name"] or t["name"].endswith("bias"))
    for t in pruned:
        assert t["numel"] - t["nonzeros"] >= round(0.8 * t["numel"]), t  # the target's zeros (and rarely a few more)
    weights = load_file(out / "model" / "model.safetensors")
    model = AlbertModel.from_pretrained(out / "model", add_pooling_layer=False)
    reloaded = dict(model.named_parameters())
    for t in report["tensors"]:
        w = weights[t["name"]]
        assert int((w == 0).sum()) == t["numel"] - t["nonzeros"]
        assert torch.equal(reloaded[t["name"]].detach(), w)
    assert result["totals"]["nonzeros"] < 0.25 * result["totals"]["parameters"]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().split("\n") if x.strip()]
    assert [m["sparsity"] for m in metrics][-1] == 0.8
    assert metrics[0]["sparsity"] < 0.8  # gradual, not one shot
    for png in ("sparsity_schedule.png", "loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((out / "model" / "edgekit.json").read_text())
    assert meta["stage"] == "prune" and meta["early_exit"] is True


def test_prune_resume_is_identical(tiny_student, tmp_path):
    prune(_cfg(tiny_student), tmp_path / "full")
    assert prune(_cfg(tiny_student), tmp_path / "half", stop_after_step=5)["interrupted"]
    prune(_cfg(tiny_student), tmp_path / "half", resume=True)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "half" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.2"], r"prune.sparsity must be in \[0, 1\), got 1.2"),
    (["--sparsity", "0.8", "--begin-step", "8", "--end-step", "4"], r"end step 4 is not after begin step 8"),
    (["--sparsity", "0.8", "--include", "no_such_layer"], r"include pattern 'no_such_layer' matches no"),
    (["--sparsity", "0.8", "--end-step", "500", "--max-steps", "10"], r"after the last training step 10"),
])
def test_prune_bad_input(tiny_student, tmp_path, args, message):
    proc = run_cli("prune", "--model", tiny_student, "--out", tmp_path / "p", *args)
    assert_clean_error(proc, message)


def test_prune_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "x").mkdir()
    assert_clean_error(run_cli("prune", "--model", tmp_path / "x", "--out", tmp_path / "p"),
                       r"is not a Hugging Face checkpoint directory")
