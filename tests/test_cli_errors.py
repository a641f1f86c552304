"""Bad input: one clear sentence, a non-zero exit, no traceback."""

import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, tiny_distill_overrides


def run_cli(*args, cwd=None):
    """``edgekit ARGS`` in this process (a subprocess costs seconds of imports per call); returns what a
    subprocess run would: returncode, stdout, stderr. An exception escaping ``main`` is what a user would see as
    a traceback, so it is reported as one. ``test_cli_py_run_as_a_process_prints_one_line`` keeps one real process."""
    import contextlib
    import io
    import os
    import traceback

    from edgekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception as e:  # noqa: BLE001
                err.write("Traceback (in process):\n" + "".join(traceback.format_exception(e)))
                code = 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["edgekit", *map(str, args)], code, out.getvalue(), err.getvalue())


def test_cli_py_run_as_a_process_prints_one_line(tmp_path, tiny_corpus):
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "distill", "--teacher", str(tmp_path / "nope"),
                           "--corpus", str(tiny_corpus), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert_clean_error(proc, r"teacher directory '.*nope' does not exist")


def assert_clean_error(proc, pattern):
    import re

    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().split("\n") if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def write_recipe(tmp_path, data):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_missing_teacher_dir(tmp_path, tiny_corpus):
    proc = run_cli("distill", "--teacher", tmp_path / "nope", "--corpus", tiny_corpus, "--out", tmp_path / "run")
    assert_clean_error(proc, r"teacher directory '.*nope' does not exist")


def test_directory_that_is_not_a_checkpoint(tmp_path, tiny_corpus):
    (tmp_path / "empty").mkdir()
    proc = run_cli("distill", "--teacher", tmp_path / "empty", "--corpus", tiny_corpus, "--out", tmp_path / "run")
    assert_clean_error(proc, r"is not a Hugging Face checkpoint directory \(it has no config.json\)")


def test_unsupported_architecture(tmp_path, tiny_corpus):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    proc = run_cli("distill", "--teacher", tmp_path / "gpt2", "--corpus", tiny_corpus, "--out", tmp_path / "run")
    assert_clean_error(proc, r"architecture 'gpt2' is not supported.*supported: albert, bert")


def test_empty_corpus(tmp_path, tiny_teacher):
    (tmp_path / "empty.txt").write_text("\n\n")
    proc = run_cli("distill", "--teacher", tiny_teacher, "--corpus", tmp_path / "empty.txt", "--out", tmp_path / "run")
    assert_clean_error(proc, r"has no text lines")


def test_corpus_line_that_is_not_json(tmp_path, tiny_teacher):
    (tmp_path / "c.jsonl").write_text('{"text": "好"}\nnot json\n')
    proc = run_cli("distill", "--teacher", tiny_teacher, "--corpus", tmp_path / "c.jsonl", "--out", tmp_path / "run")
    assert_clean_error(proc, r"c.jsonl:2 is not valid JSON")


def test_unknown_recipe_key(tmp_path, tiny_teacher, tiny_corpus):
    data = tiny_distill_overrides(tiny_teacher, tiny_corpus)
    data["train"]["learning_rate"] = 0.1
    proc = run_cli("distill", "--recipe", write_recipe(tmp_path, data), "--out", tmp_path / "run")
    assert_clean_error(proc, r"unknown recipe key 'train.learning_rate'; known keys in train: .*lr")


def test_value_of_the_wrong_type(tmp_path, tiny_teacher, tiny_corpus):
    data = tiny_distill_overrides(tiny_teacher, tiny_corpus)
    data["train"]["max_steps"] = "many"
    proc = run_cli("distill", "--recipe", write_recipe(tmp_path, data), "--out", tmp_path / "run")
    assert_clean_error(proc, r"recipe key 'train.max_steps' must be an integer, got 'many'")


def test_wrong_type_from_a_set_flag(tmp_path, tiny_teacher, tiny_corpus):
    proc = run_cli("distill", "--teacher", tiny_teacher, "--corpus", tiny_corpus, "--out", tmp_path / "run",
                   "--set", "student.num_layers=two")
    assert_clean_error(proc, r"recipe key 'student.num_layers' must be an integer")


def test_missing_recipe_file(tmp_path):
    proc = run_cli("distill", "--recipe", tmp_path / "none.yaml", "--out", tmp_path / "run")
    assert_clean_error(proc, r"recipe '.*none.yaml' does not exist")


def test_m6_edge_recipe_requires_a_teacher(tmp_path):
    proc = run_cli("distill", "--recipe", ROOT / "recipes" / "m6_edge.yaml", "--out", tmp_path / "run")
    assert_clean_error(proc, r"no teacher given; pass --teacher DIR")


def test_teacher_layer_out_of_range(tmp_path, tiny_teacher, tiny_corpus):
    proc = run_cli("distill", "--teacher", tiny_teacher, "--corpus", tiny_corpus, "--out", tmp_path / "run",
                   "--teacher-layer", "7", "--max-steps", "1")
    assert_clean_error(proc, r"teacher layer 7 does not exist: the model has 2 layers")


def test_info_of_a_missing_model(tmp_path):
    assert_clean_error(run_cli("info", tmp_path / "nothing"), r"model directory '.*nothing' does not exist")


def test_cli_runs_and_info_reports_the_student(tmp_path, tiny_teacher, tiny_corpus):
    data = tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=2)
    proc = run_cli("distill", "--recipe", write_recipe(tmp_path, data), "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    info = run_cli("info", tmp_path / "run", "--json")  # the run directory names its model
    import json

    data = json.loads(info.stdout)
    assert data["model_type"] == "albert" and data["layers"] == 2 and data["shared_layers"]
    assert data["parameters"] > 0 and data["nonzero_parameters"] <= data["parameters"]
    again = run_cli("distill", "--recipe", write_recipe(tmp_path, data if False else
                                                         tiny_distill_overrides(tiny_teacher, tiny_corpus)),
                    "--out", tmp_path / "run")
    assert_clean_error(again, r"already holds a finished model")


def test_console_script_and_cli_py_are_the_same_app():
    from pathlib import Path

    script = Path(sys.executable).parent / "edgekit"  # installed by `pip install -e .` beside the interpreter
    assert script.exists(), "the edgekit console script is not installed in this environment"
    outputs = [subprocess.run(entry + ["--help"], capture_output=True, text=True)
               for entry in ([str(script)], [sys.executable, str(ROOT / "cli.py")])]
    assert all(p.returncode == 0 for p in outputs)
    assert outputs[0].stdout.replace(str(script), "edgekit") == outputs[1].stdout
    for command in ("distill", "prune", "finetune", "eval", "export", "teacher"):
        assert command in outputs[0].stdout
