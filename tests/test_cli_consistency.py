"""One command line: help on every option, one spelling of int8, one default input length, the
same --set keys in `edgekit run` and the stage commands, one task list."""

import typing

import click
import pytest

from edgekit.cli import app


def commands(group=app, path=("edgekit",)):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*path, name))
        else:
            yield " ".join((*path, name)), cmd


def options(cmd):
    return [p for p in cmd.params if isinstance(p, click.Option)]


def test_every_command_and_option_has_help():
    missing = [f"{name} {'/'.join(o.opts)}" for name, cmd in commands() for o in options(cmd)
               if not (o.help or "").strip()]
    assert missing == []
    assert [name for name, cmd in commands() if not (cmd.help or "").strip()] == []


def test_the_walk_sees_every_command():
    names = {name for name, _ in commands()}
    assert {"edgekit run", "edgekit distill", "edgekit prune", "edgekit finetune", "edgekit export",
            "edgekit quantize", "edgekit predict", "edgekit eval", "edgekit compare", "edgekit info",
            "edgekit bundle check", "edgekit vocab trim", "edgekit teacher e5-small"} <= names


def test_int8_is_spelled_as_in_recipes():
    from edgekit.pipeline.config import ExportSection

    recipe_values = set(typing.get_args(typing.get_type_hints(ExportSection)["int8"]))
    cmds = dict(commands())
    flags = {name: {o for p in options(cmds[name]) for o in p.opts} for name in ("edgekit export", "edgekit quantize")}
    assert all("--int8" in f and "--approach" not in f for f in flags.values())
    export_int8 = next(p for p in options(cmds["edgekit export"]) if "--int8" in p.opts)
    quantize_int8 = next(p for p in options(cmds["edgekit quantize"]) if "--int8" in p.opts)
    assert set(export_int8.type.choices) == recipe_values == {"none", "dynamic", "static"}
    assert set(quantize_int8.type.choices) == recipe_values - {"none"}  # quantize always writes int8


@pytest.mark.parametrize("argv, expected", [
    ([], "none"), (["--int8"], True), (["--int8", "static"], "static"), (["--int8", "dynamic"], "dynamic"),
])
def test_export_int8_values(argv, expected):
    export = dict(commands())["edgekit export"]
    ctx = export.make_context("export", ["model", "--out", "b", *argv])
    assert ctx.params["int8"] == expected


def test_one_default_max_length():
    cmds = dict(commands())
    for name, argv in (("edgekit export", ["m", "--out", "b"]), ("edgekit quantize", ["m", "--out", "q"]),
                       ("edgekit predict", ["m", "text"])):
        (opt,) = [p for p in options(cmds[name]) if "--max-length" in p.opts]
        # None: the checkpoint's fine-tuning length (edgekit.checkpoint.default_max_length)
        assert cmds[name].make_context(name, argv).params["max_length"] is None, name
        assert "fine-tuned with, else 128" in opt.help, name


@pytest.mark.parametrize("loader, pairs, expected", [
    ("distill", ["distill.train.max_steps=5"], {"train.max_steps": 5}),
    ("distill", ["train.max_steps=5"], {"train.max_steps": 5}),
    ("distill", ["distill.method=minilmv1"], {"distill.method": "minilmv1"}),          # the stage's own section
    ("distill", ["distill.distill.method=minilmv1"], {"distill.method": "minilmv1"}),  # pipeline shape of it
    ("distill", ["distill.student.num_layers=3", "student.num_layers=4"], {"student.num_layers": 4}),
    ("prune", ["prune.prune.sparsity=0.5", "prune.train.lr=0.01"], {"prune.sparsity": 0.5, "train.lr": 0.01}),
    ("prune", ["prune.sparsity=0.6"], {"prune.sparsity": 0.6}),
    ("finetune", ["finetune.train.max_steps=7", "finetune.task.name=csl"], {"train.max_steps": 7, "task.name": "csl"}),
    ("finetune", ["finetune.freeze_embeddings=true"], {"finetune.freeze_embeddings": True}),
])
def test_set_keys_of_edgekit_run_work_in_the_stage_commands(loader, pairs, expected):
    import importlib

    from edgekit.config import parse_overrides

    module = importlib.import_module(f"edgekit.{loader}")
    cfg = getattr(module, f"load_{loader}_config")(None, parse_overrides(pairs))
    for dotted, value in expected.items():
        node = cfg
        for part in dotted.split("."):
            node = getattr(node, part)
        assert node == value, dotted


def test_a_flag_wins_over_a_pipeline_shaped_set():
    from edgekit.cli import _overrides
    from edgekit.distill import load_distill_config

    cfg = load_distill_config(None, _overrides(["distill.train.max_steps=5"], **{"train.max_steps": 9}))
    assert cfg.train.max_steps == 9


def test_compare_orders_every_task_finetune_knows():
    from edgekit.eval.compare import task_order
    from edgekit.tasks import task_names

    assert task_order() == task_names()
    assert {"cluewsc", "sentiment", "jsonl", "json", "csv"} <= set(task_order())


def test_task_help_lists_the_task_registry():
    from edgekit.tasks import task_names

    cmds = dict(commands())
    for name in ("edgekit finetune", "edgekit eval", "edgekit export"):
        (opt,) = [p for p in options(cmds[name]) if "--task" in p.opts]
        ctx = click.Context(cmds[name])
        assert ", ".join(task_names()) in opt.get_help_record(ctx)[1], name
