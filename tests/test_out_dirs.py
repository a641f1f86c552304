"""Never delete what edgekit did not write: every command's --out follows one rule.

A missing or empty --out is written; a non-empty one only if its marker (``.edgekit-written.json``)
says it is the same command's earlier output, then only with --overwrite, and never while it
holds a file edgekit did not write (that file is named and kept). Run directories follow it too
(--resume continues one), and the device runtime's unpack follows it without importing edgekit.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import tiny_distill_overrides
from edgekit.errors import UserError
from edgekit.io import atomic_dir, check_run_dir, remove_own
from edgekit_device import BundleError, pack, unpack
from edgekit_device.outdir import MARKER, foreign_entries, read_marker


def _write(kind="bundle", overwrite=False, out=None, content="new"):
    with atomic_dir(out, kind, overwrite) as tmp:
        (tmp / "model.bin").write_text(content)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "part.txt").write_text(content)


def _listing(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_missing_and_empty_out_are_written_and_marked(tmp_path):
    _write(out=tmp_path / "new")
    (tmp_path / "empty").mkdir()
    _write(out=tmp_path / "empty")
    for name in ("new", "empty"):
        marker = read_marker(tmp_path / name)
        assert marker["kind"] == "bundle" and marker["entries"] == ["model.bin", "sub", "sub/part.txt"] and not marker["open"]
        assert foreign_entries(tmp_path / name) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]  # no temporary directory left


def test_a_directory_edgekit_did_not_write_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"'.*mine' is not empty \(it holds 'notes.txt'\) and was not written by "
                                            r"edgekit; choose a new or empty output directory"):
            _write(out=out, overwrite=overwrite)
    assert _listing(out) == {"notes.txt": "my notes"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        _write(out=tmp_path / "a-file", overwrite=True)


def test_own_output_is_replaced_only_with_overwrite_and_only_if_all_of_it_is_edgekits(tmp_path):
    out = tmp_path / "bundle"
    _write(out=out, content="old")
    with pytest.raises(UserError, match=r"already exists and holds a bundle edgekit wrote earlier; pass --overwrite"):
        _write(out=out)
    with pytest.raises(UserError, match=r"holds a bundle written by edgekit, not a checkpoint"):
        _write(kind="checkpoint", out=out, overwrite=True)
    assert _listing(out)["model.bin"] == "old"

    (out / "notes.txt").write_text("mine")
    (out / "sub" / "mine.txt").write_text("mine too")  # a file inside a directory edgekit wrote
    with pytest.raises(UserError, match=r"but also 'notes.txt', which edgekit did not write; move it away"):
        _write(out=out, overwrite=True)
    (out / "notes.txt").unlink()
    with pytest.raises(UserError, match=r"but also 'sub/mine.txt'"):
        _write(out=out, overwrite=True)
    assert _listing(out)["sub/mine.txt"] == "mine too" and _listing(out)["model.bin"] == "old"
    (out / "sub" / "mine.txt").unlink()

    _write(out=out, overwrite=True, content="new")
    assert _listing(out) == {MARKER: (out / MARKER).read_text(), "model.bin": "new", "sub/part.txt": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_failed_write_keeps_the_earlier_output(tmp_path):
    out = tmp_path / "bundle"
    _write(out=out, content="old")
    with pytest.raises(RuntimeError, match="simulated"):
        with atomic_dir(out, "bundle", overwrite=True) as tmp:
            (tmp / "model.bin").write_text("half")
            raise RuntimeError("simulated crash")
    assert _listing(out)["model.bin"] == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_remove_own_deletes_only_what_edgekit_wrote(tmp_path):
    """What `edgekit run --force` does to a stage directory it redoes."""
    from edgekit.io import mark_dir, write_json

    stage = mark_dir(tmp_path / "run" / "finetune" / "tnews", "finetune-run")
    write_json(stage / "config.json", {})
    _write(kind="checkpoint", out=stage / "model")
    (stage / "model" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds 'model/notes.txt', which edgekit did not write"):
        remove_own(stage)
    assert (stage / "model" / "notes.txt").read_text() == "mine" and (stage / "config.json").exists()
    (stage / "model" / "notes.txt").unlink()
    remove_own(stage)
    assert not stage.exists()
    with pytest.raises(UserError, match="was not written by edgekit"):
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "x").write_text("x")
        remove_own(tmp_path / "plain")


def test_unpack_follows_the_same_rule(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"a": 1}))
    pack(bundle, tmp_path / "b.edgepack", codec="zlib")
    with pytest.raises(BundleError, match="already exists and holds a packed bundle edgekit wrote earlier"):
        pack(bundle, tmp_path / "b.edgepack", codec="zlib")
    (tmp_path / "user.edgepack").write_text("my own file")
    with pytest.raises(BundleError, match="exists and is not a packed bundle edgekit wrote"):
        pack(bundle, tmp_path / "user.edgepack", codec="zlib", overwrite=True)
    assert (tmp_path / "user.edgepack").read_text() == "my own file"

    target = tmp_path / "restored"
    target.mkdir()
    (target / "photo.jpg").write_text("mine")
    with pytest.raises(BundleError, match=r"is not empty \(it holds 'photo.jpg'\) and was not written by edgekit"):
        unpack(tmp_path / "b.edgepack", target, overwrite=True)
    assert _listing(target) == {"photo.jpg": "mine"}
    (target / "photo.jpg").unlink()
    unpack(tmp_path / "b.edgepack", target)
    with pytest.raises(BundleError, match="pass --overwrite"):
        unpack(tmp_path / "b.edgepack", target)
    unpack(tmp_path / "b.edgepack", target, overwrite=True)
    assert sorted(_listing(target)) == [MARKER, "manifest.json"]


def test_export_refuses_a_users_directory_and_pack_file_before_any_work(tmp_path):
    from edgekit.export import export_model

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"'.*bundle' is not empty \(it holds 'notes.txt'\)"):
        export_model(tmp_path / "no-model", out, overwrite=True)
    (tmp_path / "fresh.edgepack").write_text("a user's file with the pack's name")
    with pytest.raises(UserError, match=r"'.*fresh.edgepack' exists and is not a packed bundle edgekit wrote"):
        export_model(tmp_path / "no-model", tmp_path / "fresh", pack=True, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and not (tmp_path / "fresh").exists()


def _cli(args, capsys):
    from edgekit.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_cli_vocab_trim_out(tiny_teacher, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "vocab"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["vocab", "trim", "--tokenizer", tiny_teacher, "--corpus", tiny_corpus, "--out", out]
    code, err = _cli(args + ["--overwrite"], capsys)
    assert code == 2 and err.count("\n") == 1 and "it holds 'notes.txt'" in err and "Traceback" not in err
    (out / "notes.txt").unlink()
    assert _cli(args, capsys)[0] == 0 and (out / "vocab_map.json").is_file()
    code, err = _cli(args, capsys)
    assert code == 2 and "holds a vocabulary edgekit wrote earlier; pass --overwrite" in err
    assert _cli(args + ["--overwrite"], capsys)[0] == 0 and read_marker(out)["kind"] == "vocabulary"


def test_compare_out(tmp_path):
    from edgekit.eval import compare

    result = {"task": "tnews", "accuracy": 0.5, "name": "m", "model": str(tmp_path / "m"), "examples": 10}
    (tmp_path / "eval.json").write_text(json.dumps(result))
    compare([tmp_path / "eval.json"], tmp_path / "cmp")
    with pytest.raises(UserError, match="holds a comparison edgekit wrote earlier; pass --overwrite"):
        compare([tmp_path / "eval.json"], tmp_path / "cmp")
    compare([tmp_path / "eval.json"], tmp_path / "cmp", overwrite=True)
    assert {"compare.md", "compare.json"} <= {p.name for p in (tmp_path / "cmp").iterdir()}


def test_pipeline_refuses_a_users_directory_before_planning(tmp_path):
    from edgekit.pipeline import run_pipeline

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"is not empty \(it holds 'notes.txt'\) and is not a run directory of "
                                        r"`edgekit run`"):
        run_pipeline(object(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_run_directories_overwrite_resume_and_everything_in_them_is_claimed(tiny_teacher, tiny_corpus, tmp_path):
    """distill and prune: after a run, every entry of the run directory is edgekit's (so --overwrite can
    replace it); a user's file stops --overwrite; --resume and --overwrite exclude each other."""
    from edgekit.distill import distill, load_distill_config
    from edgekit.prune import load_prune_config, prune

    def cfg():
        return load_distill_config(None, tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=2, save_every=1))

    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"is not a run directory of `edgekit distill`"):
        distill(cfg(), out, overwrite=True)
    (out / "notes.txt").unlink()
    distill(cfg(), out)
    assert read_marker(out)["kind"] == "distill-run" and foreign_entries(out) == []
    assert {"model", "checkpoints", "vocab", "results.json", "metrics.jsonl"} <= set(read_marker(out)["entries"])
    with pytest.raises(UserError, match=r"already holds a finished model of an earlier `edgekit distill` run; pass "
                                        r"--overwrite"):
        distill(cfg(), out)
    with pytest.raises(UserError, match="pass only one of them"):
        check_run_dir(out, resume=True, overwrite=True, kind="distill-run")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds 'notes.txt', which edgekit did not write"):
        distill(cfg(), out, overwrite=True)
    assert (out / "notes.txt").exists() and (out / "model" / "config.json").exists()
    (out / "notes.txt").unlink()
    result = distill(cfg(), out, overwrite=True)
    assert result["steps"] == 2 and foreign_entries(out) == [] and (out / "model" / "config.json").exists()

    p_cfg = load_prune_config(None, {"model": str(out), "prune": {"sparsity": 0.5, "begin_step": 0, "end_step": 1,
                                                                 "frequency": 1},
                                     "data": {"corpus": [str(tiny_corpus)], "max_length": 32},
                                     "train": {"max_steps": 2, "batch_size": 8, "save_every": 1, "log_every": 1}})
    with pytest.raises(UserError, match=r"holds a distill run written by edgekit, not a prune run"):
        prune(p_cfg, out)
    prune(p_cfg, tmp_path / "p")
    assert read_marker(tmp_path / "p")["kind"] == "prune-run" and foreign_entries(tmp_path / "p") == []


@pytest.mark.slow
def test_finetune_run_directory_is_all_claimed(tmp_path):
    from transformers import BertTokenizer

    from conftest import VOCAB
    from edgekit.checkpoint import save_model_dir
    from edgekit.finetune import finetune, load_finetune_config
    from edgekit.student import StudentConfig, build_student

    tok = BertTokenizer.from_pretrained(VOCAB.parent)
    model = build_student(StudentConfig(num_layers=2, num_heads=2, hidden_size=32, embedding_size=16,
                                        intermediate_size=64, max_position_embeddings=64), len(tok), seed=0)
    save_model_dir(model, tmp_path / "student", tok, {"kind": "student"})
    rng = random.Random(0)
    lines = [json.dumps({"text": rng.choice("好坏") * 3, "label": str(i % 2)}, ensure_ascii=False) for i in range(40)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(lines[:30]) + "\n", encoding="utf-8")
    (tmp_path / "data" / "dev.jsonl").write_text("\n".join(lines[30:]) + "\n", encoding="utf-8")
    cfg = load_finetune_config(None, {"model": str(tmp_path / "student"),
                                      "task": {"name": "jsonl", "data_dir": str(tmp_path / "data"), "text_field": "text",
                                               "label_field": "label", "max_length": 16},
                                      "finetune": {"eval_every": 1},
                                      "train": {"max_steps": 2, "batch_size": 8, "save_every": 1, "log_every": 1}})
    finetune(cfg, tmp_path / "ft")
    assert read_marker(tmp_path / "ft")["kind"] == "finetune-run" and foreign_entries(tmp_path / "ft") == []
    with pytest.raises(UserError, match="already holds a finished model"):
        finetune(cfg, tmp_path / "ft")
    finetune(cfg, tmp_path / "ft", overwrite=True)
    assert foreign_entries(tmp_path / "ft") == []


def test_a_file_appearing_after_the_check_is_never_deleted(tmp_path, monkeypatch):
    """replace_dir empties nothing by force: if the directory it found empty gains a file before the
    rename (simulated by skipping the check), the write is refused and the file stays."""
    from edgekit_device import outdir
    from edgekit_device.errors import BundleError

    tmp, final = tmp_path / ".out.tmp-1", tmp_path / "out"
    tmp.mkdir()
    (tmp / "a.txt").write_text("new")
    final.mkdir()
    (final / "mine.txt").write_text("user data")
    monkeypatch.setattr(outdir, "check_out_dir", lambda *a, **k: False)
    with pytest.raises(BundleError, match="no longer empty"):
        outdir.replace_dir(tmp, final, "bundle", overwrite=False)
    assert (final / "mine.txt").read_text() == "user data"


def test_resume_of_a_finished_run_without_checkpoints_is_refused(tmp_path):
    """A run shorter than save_every finishes with no checkpoint: --resume must not silently train it again."""
    from edgekit.io import RunDir

    out = tmp_path / "p"
    run = RunDir(out, "edgekit prune", kind="prune-run")
    run.write_results({"steps": 24})
    with pytest.raises(UserError, match=r"already holds a finished model of an earlier `edgekit prune` run; there is "
                                        r"nothing to resume"):
        check_run_dir(out, resume=True, kind="prune-run")
    check_run_dir(tmp_path / "fresh", resume=True, kind="prune-run")  # nothing there yet: a new run
    pipeline = RunDir(tmp_path / "pipe", "edgekit run", kind="pipeline-run")
    pipeline.write_results({"stages": []})
    check_run_dir(tmp_path / "pipe", resume=True, kind="pipeline-run", skips_finished_work=True)  # a pipeline re-run skips finished stages


def test_compare_averages_only_rows_with_every_task(tmp_path):
    from edgekit.eval import compare

    for name, task, acc in (("a", "tnews", 0.5), ("a", "csl", 0.7), ("b", "tnews", 0.52)):
        (tmp_path / f"{name}-{task}.json").write_text(json.dumps({"task": task, "accuracy": acc, "name": name,
                                                                  "model": str(tmp_path / name)}))
    summary = compare(sorted(tmp_path.glob("*.json")))
    rows = {r["model"]: r for r in summary["rows"]}
    assert rows["a"]["average"] == pytest.approx(0.6) and rows["b"]["average"] is None
    assert "| a | ? |  |  |  |  | 50.00 | 70.00 | 60.00 |  |" in summary["markdown"]
    assert "| b | ? |  |  |  |  | 52.00 |  |  |  |" in summary["markdown"]
    assert "Note: avg is left empty for a model without a result on every task" in summary["markdown"]


def test_the_run_report_reads_only_the_runs_tasks(tmp_path):
    from edgekit.io import write_json
    from edgekit.pipeline.report import eval_files

    for row, task in (("bundle", "tnews"), ("teacher", "tnews"), ("pruned", "csl"), ("extra", "tnews")):
        write_json(tmp_path / "eval" / row / task / "eval.json", {"task": task, "accuracy": 0.5})
    got = [str(f.relative_to(tmp_path)) for f in eval_files(tmp_path, ["tnews"])]
    assert got == ["eval/teacher/tnews/eval.json", "eval/bundle/tnews/eval.json", "eval/extra/tnews/eval.json"]
    assert len(eval_files(tmp_path, ["tnews", "csl"])) == 4
