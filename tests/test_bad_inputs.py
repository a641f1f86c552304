"""Bad input across the commands, one row per case: one sentence on stderr, exit status 2, no
traceback, nothing deleted.

Each row is a command line with placeholders ({teacher}, {out}, ...: ``Workspace``), an optional
setup that makes the bad input in the row's own directory (a copy of a model with its weights
damaged, a truncated tokenizer.json, a recipe of the wrong shape...), an optional injected failure
(a full disk), and the regex its one ``error:`` line must match. Rows run the CLI's ``main`` in
this process (fast); a few run ``edgekit`` as a subprocess, as a user does. Before and after each
row every file of the workspace is listed with its size and modification time: a row passes only if
none is gone or changed, beside a sentinel file that sits next to every ``--out``.

More bad-input tests, by area: tests/test_cli_errors.py (distill and recipes), test_prune_stage.py,
test_finetune.py, test_export_onnx.py, test_device_runtime.py, test_early_exit.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import ROOT, TINY_STUDENT, clue_sentences
from test_kill_resume import assert_nothing_half_written

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# --- the workspace -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def assets(tiny_teacher, tiny_corpus, tiny_classifier, tmp_path_factory, single_torch_thread):
    """Models and data the rows read, shared by all of them (rows damage copies, never these)."""
    from edgekit.export import export_model, packed_path

    root = tmp_path_factory.mktemp("bad-inputs-assets")
    bundle = export_model(tiny_classifier, root / "bundle", sample_texts=clue_sentences(16), pack=True)
    task = root / "reviews"
    task.mkdir()
    rows = [{"text": f"第{i}条{'好极了' if i % 2 else '糟透了'}", "y": "pos" if i % 2 else "neg"} for i in range(40)]
    for split, part in (("train", rows[:32]), ("dev", rows[32:])):
        (task / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), "utf-8")
    tiny = root / "tiny-student.yaml"  # rows that get as far as training train a tiny student for 2 steps
    tiny.write_text(yaml.safe_dump({"student": dict(TINY_STUDENT), "data": {"max_length": 32},
                                    "train": {"max_steps": 2, "batch_size": 2}}))
    return {"teacher": tiny_teacher, "corpus": tiny_corpus, "classifier": tiny_classifier, "bundle": bundle,
            "packed": packed_path(bundle), "task": task, "tiny": tiny}


@dataclass
class Workspace:
    """The paths a row's command line names: the shared assets and the row's own directory."""

    tmp: Path
    assets: dict

    @property
    def paths(self) -> dict:
        return {**{k: str(v) for k, v in self.assets.items()}, "tmp": str(self.tmp), "out": str(self.tmp / "out"),
                "tmpfs": str(self.tmp / "full")}

    def copy(self, name: str) -> Path:
        """A copy of an asset in the row's directory, to damage."""
        src = Path(self.assets[name])
        dst = self.tmp / f"{name}-copy"
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        return dst

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``roots``: (size, mtime in ns)."""
    out = {}
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


# --- damage ---------------------------------------------------------------------------------------

def garbage_weights(name: str):
    """A copy of a model whose model.safetensors is not a safetensors file (a failed download)."""
    def setup(ws: Workspace) -> None:
        (ws.copy(name) / "model.safetensors").write_bytes(b"<html>503 Service Unavailable</html>" * 8)
    return setup


def truncated_weights(name: str):
    """A copy of a model whose model.safetensors stops halfway (an interrupted copy)."""
    def setup(ws: Workspace) -> None:
        weights = ws.copy(name) / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    return setup


def truncated_tokenizer(name: str):
    def setup(ws: Workspace) -> None:
        tok = ws.copy(name) / "tokenizer.json"
        data = tok.read_bytes()
        tok.write_bytes(data[: len(data) // 3])
    return setup


def wrong_sha256(ws: Workspace) -> None:
    bundle = ws.copy("bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    name = sorted(manifest["files"])[0]
    manifest["files"][name]["sha256"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def flipped_byte(ws: Workspace) -> None:
    bundle = ws.copy("bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    name = next(n for n in sorted(manifest["files"]) if n.endswith(".onnx"))
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / name).write_bytes(bytes(data))


def truncated_pack(ws: Workspace) -> None:
    data = Path(ws.assets["packed"]).read_bytes()
    ws.write("bundle.edgepack", data[: len(data) * 2 // 3])


def recipe(text: str):
    def setup(ws: Workspace) -> None:
        ws.write("recipe.yaml", text.format(**ws.paths))
    return setup


def files(named: dict[str, str | bytes]):
    """Files in the row's directory: {relative path: content}."""
    def setup(ws: Workspace) -> None:
        for name, content in named.items():
            ws.write(name, content)
    return setup


def steps(*setups):
    def setup(ws: Workspace) -> None:
        for s in setups:
            s(ws)
    return setup


def disk_full_on_write(monkeypatch, ws: Workspace) -> None:
    """The disk fills up at the first file edgekit writes (every JSON goes through write_json)."""
    import edgekit.io

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(edgekit.io, "write_json", full)


def disk_full_on_save(monkeypatch, ws: Workspace) -> None:
    """The disk fills up while the weights are written (safetensors, under save_pretrained)."""
    import safetensors.torch
    import transformers.modeling_utils

    def full(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1024)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    for module in (safetensors.torch, transformers.modeling_utils):
        if hasattr(module, "save_file"):
            monkeypatch.setattr(module, "save_file", full)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full, raising=False)


# --- the table ----------------------------------------------------------------------------------

@dataclass
class Row:
    id: str
    argv: str                        # split on spaces after the placeholders are filled in
    message: str                     # regex for the one "error:" line
    setup: Callable | None = None    # (Workspace) -> None
    patch: Callable | None = None    # (monkeypatch, Workspace) -> None: an injected failure
    subprocess: bool = False
    tmpfs: bool = False              # {tmpfs}: a 64 KiB filesystem (needs root to mount; skipped otherwise)
    xfail: str | None = None         # what is missing, for a row whose fix is another part's of issue 10


TRAIN = "--recipe {tiny}"
ROWS = [
    # paths ------------------------------------------------------------------------------------
    Row("distill: corpus file missing", "distill --teacher {teacher} --corpus {tmp}/nope.txt --out {out}",
        r"corpus file '.*nope\.txt' does not exist", subprocess=True),
    Row("distill: teacher is a file", "distill --teacher {corpus} --corpus {corpus} --out {out}",
        r"teacher '.*corpus\.txt' is a file, not a checkpoint directory"),
    Row("prune: model missing", "prune --model {tmp}/gone --sparsity 0.5 --out {out}",
        r"model directory '.*gone' does not exist"),
    Row("finetune: model missing", "finetune --model {tmp}/gone --task jsonl --data-dir {task} --text-field text "
        "--label-field y --out {out}", r"model directory '.*gone' does not exist"),
    Row("eval: model missing", "eval {tmp}/gone --task jsonl --data-dir {task} --text-field text --label-field y",
        r"'.*gone' does not exist"),
    Row("predict: model missing", "predict {tmp}/gone 你好", r"'.*gone' does not exist"),
    Row("quantize: calibration file missing", "quantize {classifier} --out {out} --int8 static "
        "--calibration {tmp}/nope.txt", r"corpus file '.*nope\.txt' does not exist"),
    Row("bundle check: directory missing", "bundle check {tmp}/gone", r"'.*gone' does not exist"),
    Row("compare: result file missing", "compare {tmp}/nope.json", r"'.*nope\.json' does not exist"),
    Row("run: recipe missing", "run {tmp}/nope.yaml --out {out}", r"recipe '.*nope\.yaml' does not exist"),
    Row("vocab trim: no tokenizer in the directory", "vocab trim --tokenizer {tmp}/empty --corpus {corpus} --out {out}",
        r"no usable tokenizer in '.*empty'", setup=files({"empty/.keep": ""})),
    # wrong kinds of model -------------------------------------------------------------------------
    Row("export: a BERT encoder, not a classifier", "export {teacher} --out {out}",
        r"holds a BertModel checkpoint, not an ALBERT classifier"),
    Row("prune: a bundle", "prune --model {bundle} --sparsity 0.5 --out {out}",
        r"'.*bundle' is a device bundle.*not a (PyTorch )?checkpoint"),
    Row("prune: a packed bundle file", "prune --model {packed} --sparsity 0.5 --out {out}",
        r"'.*\.edgepack' is a (packed bundle|file)"),
    Row("prune: a BERT encoder, not an ALBERT student", "prune --model {teacher} --sparsity 0.5 --out {out} " + TRAIN,
        r"is a bert model, not an ALBERT student"),
    Row("quantize: a BERT encoder, not a classifier", "quantize {teacher} --out {out}",
        r"is not a fine-tuned classifier; run `edgekit finetune` on it first"),
    Row("bundle check: a PyTorch checkpoint", "bundle check {classifier}", r"has no manifest\.json"),
    Row("predict: a BERT encoder", "predict {teacher} 你好",
        r"is not a fine-tuned classifier; run `edgekit finetune` on it first"),
    Row("eval: a BERT encoder", "eval {teacher} --task jsonl --data-dir {task} --text-field text --label-field y",
        r"not (a fine-tuned|an ALBERT) classifier"),
    # damaged files --------------------------------------------------------------------------------
    Row("distill: teacher weights are not safetensors", "distill --teacher {tmp}/teacher-copy --corpus {corpus} "
        "--out {out}", r"model\.safetensors in '.*teacher-copy' cannot be read", setup=garbage_weights("teacher")),
    Row("export: classifier weights cut in half", "export {tmp}/classifier-copy --out {out}",
        r"model\.safetensors in '.*classifier-copy' cannot be read", setup=truncated_weights("classifier")),
    Row("info: weights are not safetensors", "info {tmp}/classifier-copy",
        r"model\.safetensors in '.*classifier-copy' cannot be read", setup=garbage_weights("classifier")),
    Row("distill: teacher tokenizer.json truncated", "distill --teacher {tmp}/teacher-copy --corpus {corpus} "
        "--out {out}", r"no usable tokenizer in '.*teacher-copy': its tokenizer\.json cannot be read",
        setup=truncated_tokenizer("teacher")),
    Row("predict: tokenizer.json truncated", "predict {tmp}/classifier-copy 你好",
        r"no usable tokenizer in '.*classifier-copy': its tokenizer\.json cannot be read",
        setup=truncated_tokenizer("classifier")),
    Row("bundle check: a file's sha256 is wrong", "bundle check {tmp}/bundle-copy",
        r"does not match its sha256 in manifest\.json", setup=wrong_sha256, subprocess=True),
    Row("eval: a bundle file with a flipped byte", "eval {tmp}/bundle-copy --task jsonl --data-dir {task} "
        "--text-field text --label-field y", r"does not match its sha256 in manifest\.json", setup=flipped_byte),
    Row("bundle check: manifest.json cut short", "bundle check {tmp}/bundle-copy", r"manifest\.json",
        setup=steps(lambda ws: ws.copy("bundle"), files({"bundle-copy/manifest.json": '{"format": "onn'}))),
    Row("bundle unpack: a truncated .edgepack", "bundle unpack {tmp}/bundle.edgepack --out {out}",
        r"packed bundle is (malformed|truncated|corrupt)", setup=truncated_pack),
    # data ---------------------------------------------------------------------------------------
    Row("distill: corpus is not UTF-8", "distill --teacher {teacher} --corpus {tmp}/latin1.txt --out {out}",
        r"corpus file '.*latin1\.txt' is not UTF-8 text", setup=files({"latin1.txt": "café über".encode("latin-1")})),
    Row("vocab trim: empty corpus", "vocab trim --tokenizer {teacher} --corpus {tmp}/empty.txt --out {out}",
        r"has no text lines", setup=files({"empty.txt": "\n \n"})),
    Row("distill: corpus smaller than one batch", "distill --teacher {teacher} --corpus {tmp}/three.txt --out {out} "
        "--batch-size 8", r"the corpus has 3 examples, fewer than one global batch",
        setup=files({"three.txt": "一\n二\n三\n"})),
    Row("export: parity samples are not UTF-8", "export {classifier} --out {out} --samples {tmp}/gbk.txt",
        r"'.*gbk\.txt' is not UTF-8 text", setup=files({"gbk.txt": "今天天气很好".encode("gbk")})),
    Row("finetune: empty training split", "finetune --model {classifier} --task jsonl --data-dir {tmp}/task "
        "--text-field text --label-field y --out {out}", r"train\.jsonl.*(has no examples|is empty)",
        setup=files({"task/train.jsonl": "", "task/dev.jsonl": '{"text": "好", "y": "pos"}\n'})),
    Row("finetune: label field missing", "finetune --model {classifier} --task jsonl --data-dir {task} "
        "--text-field text --label-field label --out {out}", r"train\.jsonl:1 has no (field )?'label'"),
    Row("eval: split missing", "eval {classifier} --task jsonl --data-dir {task} --text-field text --label-field y "
        "--split test", r"data file '.*reviews/test\.jsonl?' does not exist"),
    Row("compare: a file that is not JSON", "compare {tmp}/result.json", r"'.*result\.json' is not a JSON file",
        setup=files({"result.json": "accuracy: 0.9\n"})),
    # recipes ------------------------------------------------------------------------------------
    Row("distill: recipe section is a number", "distill --recipe {tmp}/recipe.yaml --out {out}",
        r"recipe key 'train' must be a mapping of keys to values \(a recipe section\), got 5", setup=recipe("teacher: {{path: {teacher}}}\ntrain: 5\n")),
    Row("distill: recipe value is a list, not a string", "distill --recipe {tmp}/recipe.yaml --out {out}",
        r"recipe key 'data\.text_field' must be a string, got \['a', 'b'\]",
        setup=recipe("teacher: {{path: {teacher}}}\ndata: {{text_field: [a, b]}}\n")),
    Row("distill: recipe is not valid YAML", "distill --recipe {tmp}/recipe.yaml --out {out}",
        r"recipe '.*recipe\.yaml' is not valid YAML at line \d", setup=recipe("train:\n  max_steps: [1, 2\n")),
    Row("distill: recipe is a list", "distill --recipe {tmp}/recipe.yaml --out {out}",
        r"recipe '.*recipe\.yaml' must be a mapping of sections", setup=recipe("- teacher\n- student\n")),
    Row("distill: misspelt recipe section", "distill --recipe {tmp}/recipe.yaml --out {out}",
        r"unknown recipe key 'trian'", setup=recipe("teacher: {{path: {teacher}}}\ntrian: {{max_steps: 3}}\n")),
    Row("distill: --set without '='", "distill --teacher {teacher} --corpus {corpus} --out {out} --set train.max_steps",
        r"override 'train\.max_steps' is not of the form section\.key=value"),
    Row("distill: batch size 0", "distill --teacher {teacher} --corpus {corpus} --out {out} --batch-size 0",
        r"train\.batch_size must be at least 1, got 0"),
    Row("run: unknown task in the recipe", "run {tmp}/recipe.yaml --out {out}", r"unknown task 'nosuch'",
        setup=recipe("pipeline: {{teacher: {teacher}, tasks: [nosuch]}}\ndistill: {{data: {{corpus: [{corpus}]}}}}\n")),
    Row("run: tasks is a number", "run {tmp}/recipe.yaml --out {out}", r"recipe key 'pipeline\.tasks' must be",
        setup=recipe("pipeline: {{teacher: {teacher}, tasks: 5}}\n")),
    Row("finetune: eval every 0 steps", "finetune --model {classifier} --task jsonl --data-dir {task} --text-field "
        "text --label-field y --out {out} --eval-every 0", r"finetune\.eval_every must be at least 1, got 0"),
    # impossible numbers -------------------------------------------------------------------------
    Row("prune: sparsity -0.1", "prune --model {classifier} --sparsity -0.1 --out {out}",
        r"prune\.sparsity must be in \[0, 1\), got -0\.1"),
    Row("prune: initial sparsity 1.5", "prune --model {classifier} --sparsity 0.5 --out {out} "
        "--set prune.initial_sparsity=1.5", r"prune\.initial_sparsity must be in \[0, 1\), got 1\.5"),
    Row("predict: exit layer 0", "predict {classifier} 你好 --exit-layer 0",
        r"exit_layer must be a layer between 1 and the model's depth 4"),
    Row("predict: negative entropy threshold", "predict {classifier} 你好 --entropy -1",
        r"entropy_threshold must be greater than 0"),
    Row("quantize: exit layer 7 of 4", "quantize {classifier} --out {out} --exit-layer 7",
        r"exit_layer must be a layer between 1 and the model's depth 4, got 7"),
    Row("export: agreement threshold 1.5", "export {classifier} --out {out} --min-agreement 1.5",
        r"min.agreement must be .*got 1\.5"),
    # where results go -------------------------------------------------------------------------------
    Row("distill: --out is a file", "distill --teacher {teacher} --corpus {corpus} --out {tmp}/notes.txt",
        r"'.*notes\.txt' exists and is not a directory", setup=files({"notes.txt": "mine"})),
    Row("export: --out holds the user's files", "export {classifier} --out {tmp}/mine",
        r"'.*mine' is not empty .*edgekit never replaces files it did not write",
        setup=files({"mine/notes.txt": "mine"}), subprocess=True),
    Row("bundle unpack: --out holds the user's files", "bundle unpack {packed} --out {tmp}/mine",
        r"'.*mine' is not empty", setup=files({"mine/notes.txt": "mine"})),
    Row("distill: disk full at the first write", "distill --teacher {teacher} --corpus {corpus} --out {out} " + TRAIN,
        r"no space left on device while writing '.*out/config\.json'; free some space", patch=disk_full_on_write),
    Row("distill: disk full while saving the student", "distill --teacher {teacher} --corpus {corpus} --out {out} "
        + TRAIN, r"no space left on device", patch=disk_full_on_save),
    Row("export: --out on a full disk (a 64 KiB tmpfs)", "export {classifier} --out {tmpfs}/bundle",
        r"no space left on device", tmpfs=True),
    Row("distill: --out on a full disk (a 64 KiB tmpfs)", "distill --teacher {teacher} --corpus {corpus} "
        "--out {tmpfs}/run " + TRAIN, r"no space left on device", tmpfs=True, subprocess=True),
]


def row_params():
    for row in ROWS:
        marks = []
        if row.subprocess:
            marks.append(pytest.mark.slow)
        if row.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=row.xfail))
        yield pytest.param(row, id=row.id, marks=marks)


def run_row(row: Row, ws: Workspace, monkeypatch, capsys) -> tuple[int, str]:
    argv = [a.format(**ws.paths) for a in row.argv.split(" ")]
    if row.subprocess:
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv], capture_output=True, text=True,
                              timeout=300, cwd=ws.tmp)
        return proc.returncode, proc.stderr
    from edgekit.cli import main

    if row.patch is not None:
        row.patch(monkeypatch, ws)
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # noqa: BLE001  (in a subprocess this would be a traceback)
        import traceback

        return 1, capsys.readouterr().err + "Traceback (in process):\n" + "".join(traceback.format_exception(e))
    finally:
        monkeypatch.undo()
    return code, capsys.readouterr().err


def assert_one_sentence(code: int, stderr: str, pattern: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == 2, (code, stderr[-3000:])
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert "\n" not in lines[0].strip()


@pytest.fixture()
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs at ``tmp_path/full``: a real full disk."""
    mount = tmp_path / "full"
    mount.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                 capture_output=True).returncode == 0
    except OSError:  # no mount command
        mounted = False
    if not mounted:
        pytest.skip("mounting a tmpfs needs root; the rows that inject ENOSPC cover the answer to a full disk")
    (mount / "KEEP.txt").write_text("a file of the user's on the full disk")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("row", row_params())
def test_bad_input(row: Row, assets, tmp_path, monkeypatch, capsys, request):
    if row.tmpfs:
        request.getfixturevalue("tiny_tmpfs")
    ws = Workspace(tmp_path, assets)
    (tmp_path / "KEEP.txt").write_text("a file of the user's beside --out")
    if row.setup is not None:
        row.setup(ws)
    shared = [Path(p) for p in assets.values()]
    before = snapshot(tmp_path, *[p if p.is_dir() else p.parent for p in shared])
    code, stderr = run_row(row, ws, monkeypatch, capsys)
    assert_one_sentence(code, stderr, row.message)
    after = snapshot(tmp_path, *[p if p.is_dir() else p.parent for p in shared])
    lost = [p for p in before if p not in after]
    changed = [p for p in before if p in after and after[p] != before[p]]
    assert not lost and not changed, {"deleted": lost, "changed": changed}
    for written in (tmp_path / "out", tmp_path / "full"):  # what the command began to write
        if written.is_dir():
            assert_nothing_half_written(written)


def test_the_table_has_thirty_distinct_cases():
    assert len(ROWS) >= 30 and len({r.id for r in ROWS}) == len(ROWS)
    assert len({r.argv.split(" ")[0] for r in ROWS}) >= 10  # spread over the commands
