"""edgekit tune: option tuning's math, frozen bases, task files, mixed-task batches, the stage and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgekit.errors import UserError
from edgekit.tune.adapter import FFNAdapters, adapter_delta, adapter_rank
from edgekit.tune.options import check_prompt_count, default_prompt_count, option_logits, soft_options
from tests.conftest import DATA, make_tiny_classifier, make_tiny_teacher

METHODS = ("finetune", "lora", "prompt", "option", "option-adapter")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_torch_thread):
    """Tiny models: one thread is fastest on a shared machine."""


# --- the paper's math, against hand-computed values --------------------------------------------

def test_option_logits_are_dot_products_with_the_options():
    summary = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    options = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    assert option_logits(summary, options).tolist() == [[1.0, 3.0, -2.0], [0.0, 1.0, -1.0]]
    per_example = torch.stack([options, -options])  # example 1 has other options
    assert option_logits(summary, per_example).tolist() == [[1.0, 3.0, -2.0], [0.0, -1.0, 1.0]]
    prompts = torch.arange(10.0).reshape(5, 2)
    assert soft_options(prompts, 2).tolist() == [[6.0, 7.0], [8.0, 9.0]]


def test_adapter_delta_hand_computed():
    # z = [1, 2]; h = relu(1·1 + 2·0 + 0.5) = 1.5; h·W2 + b2 = [3, -1.5] + [0.1, 0.2]; × λ = 0.5
    z, w1, b1 = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0], [0.0]]), torch.tensor([0.5])
    w2, b2 = torch.tensor([[2.0, -1.0]]), torch.tensor([0.1, 0.2])
    out = adapter_delta(z, torch.tensor(0.5), w1, b1, w2, b2, activation=F.relu)
    assert torch.allclose(out, torch.tensor([[1.55, -0.65]]))
    # per example: the same numbers when every example carries the same adapter, 0 where λ = 0
    zb = torch.stack([z, z])
    outb = adapter_delta(zb, torch.tensor([0.5, 0.0]), w1.expand(2, 2, 1), b1.expand(2, 1), w2.expand(2, 1, 2),
                         b2.expand(2, 2), activation=F.relu)
    assert torch.allclose(outb[0], out) and torch.equal(outb[1], torch.zeros(1, 2))
    assert adapter_rank(384, 12) == 32 and adapter_rank(32, 2) == 16


def test_prompt_count_rule_and_its_limits():
    # (1% of 1,000,000 − 2,000) / 100 = 80; capped at 128 (typical) and at the room left
    assert default_prompt_count(1_000_000, 100, 2_000, room=500) == 80
    assert default_prompt_count(100_000_000, 100, 0, room=500) == 128
    assert default_prompt_count(1_000_000, 100, 2_000, room=50) == 50
    assert default_prompt_count(1_000, 100, 2_000, room=50) == 1
    with pytest.raises(UserError, match=r"^tune.prompts 500 plus task.max_length 32 is more than the model's 128 "
                                        r"positions; use at most 96 prompts"):
        check_prompt_count(500, positions=128, max_length=32)
    with pytest.raises(UserError, match="needs at least the task's 15 classes"):
        check_prompt_count(4, positions=512, max_length=64, num_options=15, method="option")


# --- models ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    return {"teacher": make_tiny_teacher(root / "teacher"), "student": make_tiny_classifier(root / "student"),
            "other": make_tiny_teacher(root / "other", seed=1), "root": root}


def _module(base_dir, method, num_labels=3, prompts=6, sharing="per-depth", seed=0):
    from edgekit.checkpoint import load_encoder, load_tokenizer
    from edgekit.tune.model import Base, TuneModule, TuneSpec, lora_arguments, special_token_ids

    base = Base(load_encoder(base_dir))
    spec = TuneSpec(method=method, num_labels=num_labels, pooling="cls")
    if method in ("prompt", "option", "option-adapter"):
        spec.prompts = prompts
    if method in ("option", "option-adapter"):
        spec.special_ids = special_token_ids(load_tokenizer(base_dir))
    if method == "option-adapter":
        spec.adapter_rank = adapter_rank(base.hidden, base.heads)
        spec.adapter_count = 1 if sharing == "shared" else base.depth
    if method == "lora":
        spec.lora = lora_arguments(base.model_type, 4, 8, 0.0, None)
    return TuneModule(base, spec, seed=seed)


def _batch(base_dir, texts, labels=None, max_length=24):
    from edgekit.checkpoint import load_tokenizer
    from edgekit.data import TokenizedCorpus

    data = TokenizedCorpus(load_tokenizer(base_dir), texts, max_length, labels=labels)
    return data.collate(range(len(texts)))


def _texts(n, offset=0):
    lines = (DATA / "clue" / "tnews" / "dev.json").read_text(encoding="utf-8").split("\n")
    rows = [json.loads(x) for x in lines[offset:offset + 4 * n] if x.strip()]
    return [r["sentence"] for r in rows[:n]]


def _randomize(module, seed=1):
    """Trained-looking task parameters: λ ≠ 0, prompts and options away from their start."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.trainable().values():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_option_logits_in_the_model_are_the_summary_dotted_with_the_last_c_prompts(bases, kind):
    module = _module(bases[kind], "option", num_labels=3, prompts=7).eval()
    _randomize(module)
    batch = _batch(bases[kind], _texts(4))
    with torch.no_grad():
        summary = module.summary(batch["input_ids"], batch["attention_mask"])
        options = module.task.prompts[-3:]  # the last C = 3 of the 7 soft prompts
        if kind == "student":  # ALBERT: E = 16, H = 32; the model's own projection maps an option to H
            options = module.base.model.encoder.embedding_hidden_mapping_in(options)
        expected = summary @ options.T
        assert torch.allclose(module.logits(batch), expected, atol=1e-6)
        assert module.logits(batch).shape == (4, 3)


def test_zero_gate_leaves_the_base_exactly_as_it_is(bases):
    """λ = 0: the adapter's hooks run (random W₁, W₂) and the outputs are bit-identical; λ ≠ 0 changes them."""
    from edgekit.checkpoint import load_encoder
    from edgekit.tune.model import Base

    for kind in ("teacher", "student"):
        base = Base(load_encoder(bases[kind])).eval()
        batch = _batch(bases[kind], _texts(3))
        embeds = base.word_embeddings(batch["input_ids"])
        adapters = FFNAdapters(base.depth, base.hidden, adapter_rank(base.hidden, base.heads))
        with torch.no_grad():
            plain = base.encode(embeds, batch["attention_mask"])
            gated = base.encode(embeds, batch["attention_mask"], adapters.stacked())
            assert base.hooks is not None and base.hooks.calls == base.depth  # every depth went through a hook
            assert torch.equal(plain, gated)
            adapters.lam.fill_(0.5)
            assert not torch.allclose(plain, base.encode(embeds, batch["attention_mask"], adapters.stacked()))


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_each_depth_gets_its_own_adapter(bases, kind):
    """A gate opened only at the last depth leaves every earlier layer's output as it was."""
    from edgekit.checkpoint import load_encoder
    from edgekit.tune.model import Base

    base = Base(load_encoder(bases[kind])).eval()
    batch = _batch(bases[kind], _texts(3))
    embeds = base.word_embeddings(batch["input_ids"])
    adapters = FFNAdapters(base.depth, base.hidden, 4)
    with torch.no_grad():
        adapters.lam[-1] = 1.0
        hooks = base.add_adapter_hooks()
        plain = base.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], output_hidden_states=True)
        hooks.set(adapters.stacked())
        hooks.start()
        gated = base.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], output_hidden_states=True)
        hooks.set(None)
    assert len(plain.hidden_states) == base.depth + 1
    for before, after in zip(plain.hidden_states[:-1], gated.hidden_states[:-1]):
        assert torch.equal(before, after)
    assert not torch.allclose(plain.hidden_states[-1], gated.hidden_states[-1])


@pytest.mark.parametrize("method", METHODS)
def test_a_few_steps_reduce_the_loss_and_leave_frozen_parameters_bit_identical(bases, method):
    module = _module(bases["teacher"], method)
    module.eval()  # no dropout: the loss before and after is the same function
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in module.trainable().items()}
    batch = _batch(bases["teacher"], _texts(12), labels=[i % 3 for i in range(12)])
    optimizer = torch.optim.AdamW(list(module.trainable().values()), lr=1e-3 if method == "finetune" else 2e-2,
                                  weight_decay=0.01)
    with torch.no_grad():
        before = float(module(batch)[0])
    for _ in range(12):
        loss, _ = module(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(module(batch)[0])
    assert after < 0.8 * before, (method, before, after)
    if method == "finetune":
        assert not frozen
    else:
        assert frozen and all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if n in frozen)
    unchanged = [n for n, p in module.trainable().items() if torch.equal(p, trained[n])]
    assert unchanged == (["base.model.pooler.dense.weight", "base.model.pooler.dense.bias"]  # no method reads it
                         if method == "finetune" else []), unchanged


def test_parameter_counts_per_method(bases):
    counts = {m: sum(p.numel() for p in _module(bases["teacher"], m, prompts=6).trainable().values()) for m in METHODS}
    hidden, layers, classes, r = 32, 2, 3, 16
    assert counts["prompt"] == 6 * hidden + (hidden + 1) * classes
    specials = 2  # [CLS], [SEP]
    assert counts["option"] == 6 * hidden + specials * hidden
    assert counts["option-adapter"] == counts["option"] + layers * (2 * hidden * r + r + hidden + 1)
    assert counts["lora"] == layers * 2 * 2 * 4 * hidden + (hidden + 1) * classes  # q, v: A (4×32) + B (32×4)


# --- task files and the task bank -----------------------------------------------------------

def _save(module, path, base_dir, task, labels, max_length=24):
    from edgekit.tune.taskfile import save_task_file, task_meta

    return save_task_file(path, module.state_dict(), task_meta(module.spec, task, labels, max_length, base_dir,
                                                               module.base))


def test_a_task_file_loads_back_only_onto_its_base(bases):
    from edgekit.tune import TaskBank, load_tuned

    module = _module(bases["teacher"], "option-adapter").eval()
    _randomize(module)
    path = _save(module, bases["root"] / "a.safetensors", bases["teacher"], "tnews", ["a", "b", "c"])
    loaded, meta = load_tuned(path, bases["teacher"])
    batch = _batch(bases["teacher"], _texts(3))
    with torch.no_grad():
        assert torch.equal(loaded.logits(batch), module.logits(batch))
    assert meta["method"] == "option-adapter" and meta["task"] == "tnews"
    for load in (lambda: load_tuned(path, bases["other"]), lambda: TaskBank(bases["other"], [path])):
        with pytest.raises(UserError) as e:
            load()
        msg = str(e.value)
        assert msg.startswith(f"task file '{path}' was tuned on the base ") and msg.endswith(
            "load it onto the base it was tuned on.") and msg.count(". ") == 0
    not_a_task = bases["root"] / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(not_a_task))
    with pytest.raises(UserError, match="without edgekit task metadata"):
        load_tuned(not_a_task, bases["teacher"])


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_mixed_batches_equal_per_task_runs(bases, kind):
    """Three tasks (prompt, option, option-adapter; different prompt counts, classes, poolings and,
    on ALBERT, adapter sharing) in one batch: each example's logits equal its task run alone."""
    from edgekit.tune import TaskBank, load_tuned

    base_dir = bases[kind]
    setups = {"p": ("prompt", 2, 5, "per-depth", "cls"), "o": ("option", 3, 9, "per-depth", "mean"),
              "oa": ("option-adapter", 4, 4, "shared" if kind == "student" else "per-depth", "cls"),
              "oa2": ("option-adapter", 3, 6, "per-depth", "mean")}
    files = {}
    for i, (name, (method, classes, prompts, sharing, pooling)) in enumerate(setups.items()):
        module = _module(base_dir, method, classes, prompts, sharing, seed=i)
        module.spec.pooling = pooling
        _randomize(module, seed=10 + i)
        files[name] = _save(module, bases["root"] / f"{kind}-{name}.safetensors", base_dir, name,
                            [f"{name}{c}" for c in range(classes)], max_length=16 + 4 * i)
    bank = TaskBank(base_dir, files)
    texts = _texts(12, offset=40)
    names = list(setups)
    pairs = [(names[(i * 7) % 4], t) for i, t in enumerate(texts)]
    mixed = bank.logits(pairs)
    for name in names:
        alone, meta = load_tuned(files[name], base_dir)
        mine = [i for i, (t, _) in enumerate(pairs) if t == name]
        batch = _batch(base_dir, [pairs[i][1] for i in mine], max_length=meta["max_length"])
        with torch.no_grad():
            solo = alone.logits(batch)
        for row, i in enumerate(mine):
            assert mixed[i].shape == (setups[name][1],)
            assert torch.allclose(mixed[i], solo[row], atol=1e-5), (name, mixed[i], solo[row])
    preds = bank.predict(pairs[:3])
    assert [p["task"] for p in preds] == [t for t, _ in pairs[:3]]
    assert preds[0]["label"].startswith(pairs[0][0])
    with pytest.raises(UserError, match=r"^task 'nope' is not in this bank; it serves p, o, oa, oa2\.$"):
        bank.predict([("nope", "text")])


# --- the stage and the CLI ------------------------------------------------------------------

def _task_dir(root: Path, name: str, labels: list[str], offset: int) -> Path:
    lines = (DATA / "clue" / "tnews" / "dev.json").read_text(encoding="utf-8").split("\n")
    rows = [json.loads(x) for x in lines[offset:offset + 600] if x.strip()]
    keep = sorted({r["label"] for r in rows})[:len(labels)]
    rows = [{"sentence": r["sentence"], "label": labels[keep.index(r["label"])]} for r in rows if r["label"] in keep]
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.json").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:48]), encoding="utf-8")
    (d / "dev.json").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows[48:72]), encoding="utf-8")
    return d


def _cli(args):
    from click.testing import CliRunner

    from edgekit.cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


def _main_exit(args, capsys):
    from edgekit.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return e.value.code, err.strip().splitlines()[-1]  # the lines before: transformers' loading progress


def test_tune_cli_writes_a_small_task_file_and_eval_serves_tasks_mixed(bases, capsys):
    root = bases["root"] / "cli"
    data = root / "data"
    _task_dir(data, "tnews", ["100", "101", "102"], 0)
    _task_dir(data, "iflytek", ["0", "1"], 3000)
    common = ["--model", str(bases["teacher"]), "--data-dir", None, "--max-steps", "4", "--eval-every", "2",
              "--batch-size", "8", "--set", "task.max_length=24", "--set", "train.grad_accum=1",
              "--set", "train.save_every=2"]
    runs = {}
    for task, method in (("tnews", "option-adapter"), ("iflytek", "prompt")):
        args = list(common)
        args[3] = str(data / task)
        out = root / f"run-{task}"
        r = _cli(["tune", "--task", task, "--method", method, "--out", str(out), *args])
        assert r.exit_code == 0, r.output
        assert f"tune {method} on {task}: " in r.output and "% of the base's 698,464" in r.output
        results = json.loads((out / "results.json").read_text())
        assert results["method"] == method and results["steps"] == 4 and len(results["history"]) == 2
        assert (out / "task.safetensors").stat().st_size <= 0.02 * results["base_bytes"]
        assert results["lr"] == 1e-4 and results["global_batch"] == 8
        assert json.loads((out / "config.json").read_text())["config"]["tune"]["method"] == method
        runs[task] = out
    # a finished run is not overwritten by accident
    code, err = _main_exit(["tune", "--task", "tnews", "--out", str(runs["tnews"]), "--model", str(bases["teacher"]),
                            "--data-dir", str(data / "tnews")], capsys)
    assert code == 2 and "already holds a finished model" in err
    r = _cli(["eval", str(bases["teacher"]), "--tasks", "tnews,iflytek", "--task-file", str(runs["tnews"]),
              "--task-file", str(runs["iflytek"] / "task.safetensors"), "--data-dir", str(data), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    for task in ("tnews", "iflytek"):
        dev = (data / task / "dev.json").read_text(encoding="utf-8").split("\n")
        assert result["tasks"][task]["examples"] == len(dev) > 4
    assert result["methods"] == {"tnews": "option-adapter", "iflytek": "prompt"}
    code, err = _main_exit(["eval", str(bases["other"]), "--tasks", "tnews", "--task-file", str(runs["tnews"]),
                            "--data-dir", str(data)], capsys)
    assert code == 2 and err.startswith("error: task file") and "was tuned on the base" in err


def test_an_interrupted_run_resumes_to_the_same_task_file(bases):
    """Checkpoints hold only the task's parameters (and optimizer state); resuming from them gives
    the task file an uninterrupted run gives, bit for bit."""
    from safetensors.torch import load_file

    from edgekit.tune import load_tune_config, tune

    data = _task_dir(bases["root"] / "resume", "tnews", ["100", "101", "102"], 0)
    overrides = {"model": str(bases["teacher"]), "task": {"name": "tnews", "data_dir": str(data), "max_length": 24},
                 "tune": {"method": "option-adapter", "eval_every": 2, "prompts": 8},
                 "train": {"max_steps": 4, "batch_size": 8, "grad_accum": 1, "save_every": 2, "lr": 1e-2}}
    whole, parts = bases["root"] / "whole", bases["root"] / "parts"
    tune(load_tune_config(None, overrides), whole, echo=lambda _: None)
    stopped = tune(load_tune_config(None, overrides), parts, stop_after_step=2, echo=lambda _: None)
    assert stopped["interrupted"] and not (parts / "task.safetensors").exists()
    checkpoint = next((parts / "checkpoints").glob("step-*"))
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert all(k.startswith("task.") for k in state["model"])  # not the frozen base
    tune(load_tune_config(None, overrides), parts, resume=True, echo=lambda _: None)
    a, b = load_file(whole / "task.safetensors"), load_file(parts / "task.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_user_errors_are_one_sentence(bases, capsys):
    data = _task_dir(bases["root"] / "errs", "tnews", ["100", "101", "102"], 0)
    base = ["tune", "--task", "tnews", "--data-dir", str(data), "--model", str(bases["teacher"])]
    cases = [
        (["--method", "adapterz", "--out", str(bases["root"] / "e1")],
         "recipe key 'tune.method' must be one of 'finetune', 'lora', 'prompt', 'option', 'option-adapter', got 'adapterz'."),
        (["--method", "option", "--prompts", "200", "--out", str(bases["root"] / "e2")],
         "tune.prompts 200 plus task.max_length 128 is more than the model's 128 positions; use at most 0 prompts or "
         "a shorter task.max_length."),
        (["--method", "option", "--prompts", "2", "--set", "task.max_length=32", "--out", str(bases["root"] / "e3")],
         "tune.prompts is 2, but option tuning needs at least the task's 3 classes (the last C soft prompts are the "
         "options); raise tune.prompts."),
        (["--method", "prompt", "--out", str(bases["root"] / "e4")],
         "task.max_length 128 leaves 0 of the model's 128 positions for soft prompts, fewer than the 1 prompt tuning "
         "needs; lower task.max_length."),
        (["--method", "prompt", "--set", "tune.freeze_embeddings=true", "--out", str(bases["root"] / "e5")],
         "tune.freeze_embeddings applies to the finetune method only; the prompt method already keeps the base frozen."),
    ]
    for extra, message in cases:
        code, err = _main_exit([*base, *extra], capsys)
        assert (code, err) == (2, f"error: {message}")
    code, err = _main_exit(["eval", str(bases["teacher"]), "--tasks", "tnews"], capsys)
    assert code == 2 and err == ("error: --tasks needs the task files: pass --task-file PATH for each task (from "
                                 "`edgekit tune`).")
