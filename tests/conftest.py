"""Shared fixtures: tiny models built from configs, the real bert-base-chinese vocabulary, real CLUE text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
VOCAB = DATA / "vocab" / "bert-base-chinese" / "vocab.txt"


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clue_sentences(n: int, task: str = "tnews", split: str = "dev.json", field: str = "sentence") -> list[str]:
    lines = (DATA / "clue" / task / split).read_text(encoding="utf-8").split("\n")
    return [json.loads(line)[field] for line in lines[:n] if line.strip()]


def make_tiny_teacher(path: Path, layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(seed)
    tok = BertTokenizer.from_pretrained(VOCAB.parent)  # v5 ignores vocab_file=
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                                 num_attention_heads=heads, intermediate_size=hidden * 2,
                                 max_position_embeddings=128, initializer_range=0.2))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "bert-tiny")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(clue_sentences(64)) + "\n", encoding="utf-8")
    return path


TINY_STUDENT = {"num_layers": 2, "num_heads": 2, "hidden_size": 32, "embedding_size": 16,
                "intermediate_size": 64, "max_position_embeddings": 128}


def tiny_distill_overrides(teacher: Path, corpus: Path, **train) -> dict:
    return {
        "teacher": {"path": str(teacher)},
        "student": dict(TINY_STUDENT),
        "data": {"corpus": [str(corpus)], "max_length": 32},
        "vocab": {"trim": "true"},
        "train": {"max_steps": 8, "batch_size": 8, "lr": 1e-3, "save_every": 4, "log_every": 1,
                  "warmup_ratio": 0.0, **train},
    }


def write_separable_task(path: Path, train: int = 200, dev: int = 40, seed: int = 0) -> Path:
    """A two-class task a keyword decides: JSON lines {"review": filler + 好极了 (pos) or 糟透了 (neg)
    + filler, "y": "pos" | "neg"}, labels alternating, filler drawn from ``seed``; the first
    ``train`` lines are train.jsonl, the next ``dev`` dev.jsonl. A tiny model learns it in ~60 steps."""
    rng = random.Random(seed)
    lines = []
    for i in range(train + dev):
        label = i % 2
        filler = "".join(rng.choice("今天我们去买东西看电影吃饭") for _ in range(rng.randint(2, 8)))
        text = f"{filler}{'好极了' if label else '糟透了'}{filler}"
        lines.append(json.dumps({"review": text, "y": "pos" if label else "neg"}, ensure_ascii=False))
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.jsonl").write_text("\n".join(lines[:train]) + "\n", encoding="utf-8")
    (path / "dev.jsonl").write_text("\n".join(lines[train:]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def separable(tmp_path_factory) -> Path:
    """``write_separable_task``'s 200 train and 40 dev lines (read only: tests write elsewhere)."""
    return write_separable_task(tmp_path_factory.mktemp("separable"))


def make_tiny_albert(path: Path, num_layers: int = 2) -> Path:
    """An untrained ALBERT student (hidden 32, 2 heads, embedding 16, seed 0) with the
    bert-base-chinese tokenizer, saved as a student checkpoint directory."""
    from transformers import BertTokenizer

    from edgekit.checkpoint import save_model_dir
    from edgekit.student import StudentConfig, build_student

    tok = BertTokenizer.from_pretrained(VOCAB.parent)
    model = build_student(StudentConfig(num_layers=num_layers, num_heads=2, hidden_size=32, embedding_size=16,
                                        intermediate_size=64, max_position_embeddings=64), len(tok), seed=0)
    save_model_dir(model, path, tok, {"kind": "student"})
    return path


TINY_CLASSIFIER = {"num_layers": 4, "num_heads": 2, "hidden_size": 32, "embedding_size": 16, "intermediate_size": 64,
                   "max_position_embeddings": 64}


def make_tiny_classifier(path: Path, sparsity: float = 0.5, seed: int = 0) -> Path:
    """A saved EarlyExitClassifier (4 shared layers, hidden 32, 3 labels) with the bert-base-chinese
    WordPiece tokenizer, pruned to ``sparsity``. Weights are drawn with std 0.2 (not the usual 0.02)
    so that different exits and texts predict different classes, as a trained model does."""
    import torch
    from transformers import BertTokenizer

    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.prune import MagnitudePruner
    from edgekit.student import StudentConfig, build_student

    tok = BertTokenizer.from_pretrained(VOCAB.parent)
    torch.manual_seed(seed)
    model = EarlyExitClassifier.from_student(
        build_student(StudentConfig(**TINY_CLASSIFIER), vocab_size=len(tok), pooler=True, seed=seed), num_labels=3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.05)
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.update_masks(sparsity)
    pruner.squash_mask()
    model.model.config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    model.model.config.label2id = {v: k for k, v in model.model.config.id2label.items()}
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("classifier") / "clf")


@pytest.fixture(scope="module")
def single_torch_thread():
    """Two shared cores: several torch threads spin against each other and against onnxruntime."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def classifier(tiny_classifier):
    """The tiny early-exit classifier of ``tiny_classifier``, in eval mode."""
    from edgekit.early_exit import EarlyExitClassifier

    return EarlyExitClassifier.from_pretrained(tiny_classifier).eval()


def invoke_cli(*args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``edgekit ARGS`` in this process (module fixtures cannot use capsys)."""
    import contextlib
    import io

    from edgekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()
