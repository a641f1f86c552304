"""No code execution from files: no pickle, ``weights_only=False``, ``eval``/``exec`` or unsafe YAML
anywhere in edgekit/ and export/, and a run directory holding a pickle cannot run it on --resume.

The scan reads the syntax tree (not text), so ``model.eval()`` is not a hit and a call spread
over lines still is; a planted file shows it reports every pattern it looks for.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from edgekit.errors import UserError

SCANNED = (ROOT / "edgekit", ROOT / "export")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib", "pickletools"}
UNSAFE_BUILTINS = {"eval", "exec"}
YAML_LOADS = {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def code_from_files(paths) -> list[str]:
    """``file:line: what`` for every way to run code from a file found in the .py files under ``paths``."""
    found = []
    for root in paths:
        for path in sorted(Path(root).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            where = f"{path.relative_to(path.parents[1]) if len(path.parents) > 1 else path.name}"
            for node in ast.walk(tree):
                hit = None
                if isinstance(node, ast.Import):
                    bad = [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
                    hit = bad and f"import {bad[0]}"
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    hit = (node.module or "").split(".")[0] in UNSAFE_MODULES and f"from {node.module} import"
                elif isinstance(node, ast.Call):
                    name = _dotted(node.func)
                    keywords = {k.arg: k.value for k in node.keywords if k.arg}
                    if isinstance(node.func, ast.Name) and name in UNSAFE_BUILTINS:
                        hit = f"{name}()"
                    elif name.split(".")[0] in UNSAFE_MODULES:
                        hit = f"{name}()"
                    elif name in YAML_LOADS:
                        loader = ast.unparse(keywords["Loader"]) if "Loader" in keywords else ""
                        hit = not (name == "yaml.load" and loader.endswith("SafeLoader")) and f"{name}()"
                    elif name in ("np.load", "numpy.load"):
                        flag = keywords.get("allow_pickle")
                        hit = isinstance(flag, ast.Constant) and flag.value is True and f"{name}(allow_pickle=True)"
                    elif name in ("pd.read_pickle", "pandas.read_pickle"):
                        hit = f"{name}()"
                    elif name == "torch.load":
                        flag = keywords.get("weights_only")
                        hit = not (isinstance(flag, ast.Constant) and flag.value is True) and \
                            "torch.load() without weights_only=True"
                    if isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is False:
                        hit = f"{name}(weights_only=False)"
                if hit:
                    found.append(f"{where}:{node.lineno}: {hit}")
    return found


def test_edgekit_and_the_device_runtime_run_no_code_from_files():
    assert sum(1 for root in SCANNED for _ in root.rglob("*.py")) > 40  # the scan sees the packages
    assert code_from_files(SCANNED) == []
    text = "\n".join(p.read_text(encoding="utf-8") for root in SCANNED for p in root.rglob("*.py"))
    assert "weights_only=False" not in text.replace(" ", "")


def test_the_scan_reports_a_planted_example(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "ok.py").write_text(textwrap.dedent("""\
        import json, torch, yaml
        model.eval()
        torch.load(f, map_location="cpu", weights_only=True)
        yaml.safe_load(text)
        yaml.load(text, Loader=yaml.SafeLoader)
        np.load(f)
    """))
    (pkg / "bad.py").write_text(textwrap.dedent("""\
        import pickle
        from dill import loads
        state = torch.load(path,
                           weights_only=False)
        torch.load(path)
        value = eval(line)
        exec(source)
        yaml.load(text)
        np.load(f, allow_pickle=True)
        pickle.loads(blob)
        torch.serialization.load(path, weights_only=False)
    """))
    assert code_from_files([tmp_path]) == [
        "pkg/bad.py:1: import pickle", "pkg/bad.py:2: from dill import", "pkg/bad.py:3: torch.load(weights_only=False)",
        "pkg/bad.py:5: torch.load() without weights_only=True", "pkg/bad.py:6: eval()", "pkg/bad.py:7: exec()",
        "pkg/bad.py:8: yaml.load()", "pkg/bad.py:9: np.load(allow_pickle=True)", "pkg/bad.py:10: pickle.loads()",
        "pkg/bad.py:11: torch.serialization.load(weights_only=False)"]


class _Planted:
    """A pickle payload that, if unpickled, creates a file: proof that code ran."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return (Path.touch, (self.proof,))


def _trainer(run_dir: Path):
    from edgekit.io import RunDir
    from edgekit.train import TrainConfig, Trainer

    class Data:
        def state_dict(self):
            return {"position": 0}

        def load_state_dict(self, state):
            pass

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, batch):
            loss = self.linear(batch["x"]).pow(2).mean()
            return loss, {"loss": loss.detach()}

    torch.manual_seed(0)
    batch = {"x": torch.ones(4, 2)}
    return Trainer(Model(), lambda: batch, Data(), TrainConfig(max_steps=3, save_every=1, log_every=1, device="cpu",
                                                               precision="fp32"), RunDir(run_dir, kind="distill-run"))


def test_resume_from_a_checkpoint_holding_a_pickle_runs_nothing_and_says_so(tmp_path):
    trainer = _trainer(tmp_path / "run")
    trainer.train(stop_after_step=2)
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000002"
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)  # what edgekit writes loads safely
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    proof = tmp_path / "code-ran"
    torch.save({**state, "rng": _Planted(proof)}, ckpt / "trainer_state.pt")
    with pytest.raises(UserError, match=r"cannot resume from '.*step-0000002': its trainer_state.pt is not a "
                                        r"checkpoint this edgekit reads \(UnpicklingError\)"):
        _trainer(tmp_path / "run").resume()
    assert not proof.exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from edgekit.train import _rng_state, _set_rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.standard_normal()  # leaves a cached Gaussian in both
    torch.save(_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected
