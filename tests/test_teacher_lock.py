"""`torchrun` on first use of the built-in teacher: every rank resolves 'e5-small' at once; one
imports it, the others wait for that import instead of racing it."""

import multiprocessing
import os
import time
from pathlib import Path


def _slow_import(counter: Path):
    def fake_import(target, overwrite=False, **_):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough that an unlocked second rank would start its own import
        target = Path(target)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text("{}\n")
        os.replace(tmp, target)  # as the real import: written aside, renamed into place
        return target

    return fake_import


def _rank(barrier, results):
    from edgekit.checkpoint import resolve_teacher

    barrier.wait()
    results.put(str(resolve_teacher("e5-small")))


def _resolve_in_processes(n: int) -> list:
    ctx = multiprocessing.get_context("fork")  # the children inherit the monkeypatched import
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    return [results.get(timeout=5) for _ in range(n)]


def test_two_ranks_import_the_builtin_teacher_once(tmp_path, monkeypatch):
    import edgekit.teachers

    counter = tmp_path / "imports.txt"
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(edgekit.teachers, "import_e5_small", _slow_import(counter))
    paths = _resolve_in_processes(2)
    target = tmp_path / "home" / "teachers" / "e5-small"
    assert paths == [str(target)] * 2
    assert len(counter.read_text().split()) == 1
    assert (target / "config.json").is_file()
    assert not list(target.parent.glob(".e5-small.tmp-*"))
    # A later first use finds the checkpoint and imports nothing.
    _resolve_in_processes(2)
    assert len(counter.read_text().split()) == 1
