"""Every command that takes a model takes the run directory that wrote it (RUN/model, as its
results.json records), and `edgekit predict` runs bundles through the device runtime."""

import json
import shutil

import pytest

from conftest import tiny_distill_overrides
from edgekit.checkpoint import check_model_dir, default_max_length, resolve_model_dir
from edgekit.errors import UserError


def run_cli(capsys, *args):
    from edgekit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def fake_run(path, results=None, config=None, model_from=None, name="model"):
    """A stage's run directory as RunDir writes it: its config.json is the run's, not a model's."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"command": "edgekit x", "config": config or {"train": {}}}))
    (path / "versions.json").write_text("{}")
    if model_from is not None:
        shutil.copytree(model_from, path / name)
    if results is not None:
        (path / "results.json").write_text(json.dumps(results))
    return path


def test_a_checkpoint_names_itself(tiny_classifier):
    assert resolve_model_dir(tiny_classifier) == tiny_classifier
    assert check_model_dir(tiny_classifier) == tiny_classifier


def test_a_moved_run_directory_names_its_own_model(tiny_classifier, tmp_path):
    # results.json records --out as typed, here a directory that no longer exists (the run was moved).
    run = fake_run(tmp_path / "run", {"model_dir": str(tmp_path / "elsewhere" / "model")}, model_from=tiny_classifier)
    assert resolve_model_dir(run) == run / "model"
    assert check_model_dir(run) == run / "model"


def test_a_run_written_before_the_rename_names_its_student(tiny_classifier, tmp_path):
    run = fake_run(tmp_path / "old", {"student_dir": "runs/old/student"}, model_from=tiny_classifier, name="student")
    assert check_model_dir(run) == run / "student"


@pytest.mark.parametrize("make, message", [
    (lambda d, clf: fake_run(d), r"'.*run' is a run directory whose run has not finished \(it has no results.json\); "
                                 r"finish it with --resume"),
    (lambda d, clf: fake_run(d, {"model_dir": "/nowhere/model"}),
     r"the model that '.*run/results.json' records \('/nowhere/model'\) is missing; pass the model directory itself"),
    (lambda d, clf: fake_run(d, {"accuracy": 0.5, "task": "tnews", "model": "x"}),
     r"'.*run' is a run directory whose results.json records no model"),
    (lambda d, clf: fake_run(d, {"bundle": str(d / "bundle")}),
     r"'.*run' is an export run: its bundle is not a PyTorch checkpoint; pass the fine-tuned model"),
    (lambda d, clf: fake_run(d, config={"pipeline": {}}) and fake_run(d / "finetune" / "t", model_from=clf),
     r"'.*run' is an `edgekit run` directory holding several models; pass one of them as the model: "
     r".*run/finetune/t/model\."),
])
def test_run_directories_that_name_no_checkpoint(tiny_classifier, tmp_path, make, message):
    make(tmp_path / "run", tiny_classifier)
    with pytest.raises(UserError, match=message):
        check_model_dir(tmp_path / "run")


def test_a_bundle_where_a_checkpoint_belongs_names_its_source(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"source": {"checkpoint": "/runs/f/model"}}))
    with pytest.raises(UserError, match=r"'.*b' is a device bundle, not a PyTorch checkpoint; pass the checkpoint "
                                        r"it was exported from \(/runs/f/model\)\."):
        check_model_dir(tmp_path / "b")
    assert resolve_model_dir(tmp_path / "b", bundles=True) == tmp_path / "b"


def test_the_default_input_length_is_the_fine_tuning_one(tiny_classifier, tmp_path):
    assert default_max_length(tiny_classifier) == 64  # no record: 128, capped at its 64 positions
    clf = tmp_path / "clf"
    shutil.copytree(tiny_classifier, clf)
    (clf / "edgekit.json").write_text(json.dumps({"max_length": 24}))
    assert default_max_length(clf) == 24


@pytest.mark.slow
def test_stage_commands_chain_through_run_directories(tiny_teacher, tiny_corpus, tmp_path, capsys,
                                                      single_torch_thread):
    """distill --out d; prune --model d; finetune --model p; export f; predict f and the bundle."""
    import yaml

    recipe = tmp_path / "distill.yaml"
    recipe.write_text(yaml.safe_dump(tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=2)))
    d, p, f, b = (tmp_path / n for n in ("d", "p", "f", "b"))
    assert run_cli(capsys, "distill", "--recipe", recipe, "--out", d)[0] == 0
    code, out, err = run_cli(capsys, "prune", "--model", d, "--sparsity", "0.5", "--max-steps", "2", "--batch-size", "8",
                             "--out", p)
    assert code == 0, err
    assert f"pruned student: {p / 'model'}" in out
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": ("好极了" if i % 2 else "糟透了") * (1 + i % 3), "y": "pos" if i % 2 else "neg"} for i in range(24)]
    for split in ("train", "dev"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    code, out, err = run_cli(capsys, "finetune", "--model", p, "--task", "jsonl", "--data-dir", data, "--text-field",
                             "text", "--label-field", "y", "--max-steps", "2", "--eval-every", "2", "--batch-size", "8",
                             "--out", f, "--set", "task.max_length=24")
    assert code == 0, err
    for run in (d, p, f):
        assert json.loads((run / "results.json").read_text())["model_dir"] == str(run / "model")
    code, out, err = run_cli(capsys, "info", d, "--json")
    assert code == 0 and json.loads(out)["path"] == str(d / "model")
    code, out, err = run_cli(capsys, "eval", f, "--task", "jsonl", "--data-dir", data, "--text-field", "text",
                             "--label-field", "y", "--json")
    assert code == 0 and json.loads(out)["model"] == str(f / "model"), err
    assert run_cli(capsys, "export", f, "--out", b, "--pack")[0] == 0
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["max_length"] == 24  # the fine-tuning length, recorded in f/model/edgekit.json
    assert manifest["source"]["checkpoint"] == str((f / "model").resolve())
    texts = ["好极了", "糟透了糟透了", "今天"]
    code, out, err = run_cli(capsys, "predict", f, *texts, "--json")
    assert code == 0 and "Loading weights" not in err, err
    torch_rows = json.loads(out)
    code, out, err = run_cli(capsys, "predict", b, *texts, "--json")
    assert code == 0, err
    device_rows = json.loads(out)
    assert [r["label"] for r in device_rows] == [r["label"] for r in torch_rows]
    for a, c in zip(device_rows, torch_rows):
        assert a["exit_layer"] == c["exit_layer"] == 2
        assert a["scores"] == pytest.approx(c["scores"], abs=1e-4)
    code, out, err = run_cli(capsys, "predict", b, "x", "--max-length", "12")
    assert code == 2 and "the bundle's input length was fixed at export (24 tokens)" in err
    for command in (["bundle", "check", f"{b}.edgepack"], ["predict", f"{b}.edgepack", "x"]):
        code, out, err = run_cli(capsys, *command)
        assert code == 2 and f"is a packed bundle; restore it with `edgekit bundle unpack {b}.edgepack --out DIR`" in err
