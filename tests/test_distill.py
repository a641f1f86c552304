import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AlbertModel, AutoModel, AutoTokenizer

from conftest import ROOT, tiny_distill_overrides
from edgekit.distill import distill, load_distill_config


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().split("\n") if line.strip()]


def test_loss_falls_and_teacher_is_frozen(tiny_teacher, tiny_corpus, tmp_path):
    before = {k: v.clone() for k, v in AutoModel.from_pretrained(tiny_teacher).state_dict().items()}
    cfg = load_distill_config(None, tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=40, lr=3e-3))
    result = distill(cfg, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    after = AutoModel.from_pretrained(tiny_teacher).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result["steps"] == 40 and result["teacher_layer"] == 2


def test_teacher_stays_in_eval_mode_and_gets_no_gradients(tiny_teacher, tiny_corpus):
    from edgekit.checkpoint import load_encoder
    from edgekit.distill.minilm import RelationDistiller
    from edgekit.student import StudentConfig, build_student

    teacher = load_encoder(tiny_teacher, role="teacher", frozen=True)
    student = build_student(StudentConfig(num_layers=2, num_heads=2, hidden_size=32, embedding_size=16,
                                          intermediate_size=64), vocab_size=teacher.config.vocab_size)
    student.train()
    d = RelationDistiller(teacher, student)
    ids = torch.randint(0, 1000, (2, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    d.train()
    loss, _ = d(batch)
    loss.backward()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert student.encoder.albert_layer_groups[0].albert_layers[0].attention.query.weight.grad is not None


def test_saved_student_loads_and_trimmed_tokenizer_round_trips(tiny_teacher, tiny_corpus, tmp_path):
    cfg = load_distill_config(None, tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=2))
    result = distill(cfg, tmp_path / "run")
    student_dir = tmp_path / "run" / "model"
    model = AlbertModel.from_pretrained(student_dir)
    assert model.config.num_hidden_layers == 2 and model.config.num_hidden_groups == 1
    assert model.config.embedding_size == 16
    tok = AutoTokenizer.from_pretrained(student_dir)
    teacher_tok = AutoTokenizer.from_pretrained(tiny_teacher)
    kept = json.loads((student_dir / "vocab_map.json").read_text())["teacher_ids"]
    assert len(tok) == len(kept) == model.config.vocab_size < len(teacher_tok)
    assert result["vocab"]["corpus_coverage"] == 1.0
    for line in tiny_corpus.read_text(encoding="utf-8").split("\n")[:20]:
        if not line:
            continue
        t_ids = teacher_tok(line, truncation=True, max_length=32)["input_ids"]
        s_ids = tok(line, truncation=True, max_length=32)["input_ids"]
        assert [kept[i] for i in s_ids] == t_ids
        assert tok.decode(s_ids, skip_special_tokens=True).replace(" ", "") == \
            teacher_tok.decode(t_ids, skip_special_tokens=True).replace(" ", "")
    meta = json.loads((student_dir / "edgekit.json").read_text())
    assert meta["kind"] == "student" and meta["stage"] == "distill"
    for name in ("config.json", "versions.json", "results.json", "metrics.jsonl"):
        assert (tmp_path / "run" / name).exists(), name


def test_resume_ends_identical_to_an_uninterrupted_run(tiny_teacher, tiny_corpus, tmp_path):
    over = tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=8, save_every=3)
    over["student"]["dropout"] = 0.1  # so the RNG state matters too
    distill(load_distill_config(None, over), tmp_path / "full")
    stopped = distill(load_distill_config(None, over), tmp_path / "resumed", stop_after_step=5)
    assert stopped == {"interrupted": True, "step": 5, "run_dir": str(tmp_path / "resumed")}
    assert not (tmp_path / "resumed" / "model").exists()
    distill(load_distill_config(None, over), tmp_path / "resumed", resume=True)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "resumed")


@pytest.mark.slow
def test_data_parallel_with_two_processes_on_cpu(tiny_teacher, tiny_corpus, tmp_path):
    recipe = tmp_path / "r.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=4, batch_size=4)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                           str(ROOT / "cli.py"), "distill", "--recipe", str(recipe), "--out", str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 4
    AlbertModel.from_pretrained(tmp_path / "ddp" / "model")
