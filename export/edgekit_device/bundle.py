"""Loading and validating a bundle directory (``manifest.json`` + the files it lists).

``load_bundle`` checks the manifest's structure and every listed file's size and sha256 before
anything runs, so a truncated download or a flipped byte is a ``BundleError`` naming the file,
not a wrong prediction. The format is described in ``export/BUNDLE.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BundleError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "int8")
LAYOUTS = {"fixed": ("model",), "per-layer": ("embed", "layer", "head"),
           # multi-segment late interaction: run by edgekit_device.segments.SegmentBundle
           "late-interaction": ("segment_encoder", "interaction")}
# How the head reads the last computed layer: [CLS] through the pooler, or the masked token mean
# (the head graph then takes the attention mask too). Bundles without model.pooling are cls.
POOLINGS = ("cls", "mean")
HEAD_INPUTS = {"cls": ("hidden",), "mean": ("hidden", "attention_mask")}
_REQUIRED = ("format_version", "format", "precision", "layout", "graphs", "max_length", "exits", "model",
             "tokenizer", "labels", "files")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A validated bundle: its directory, manifest, labels, and the device tokenizer (on demand)."""

    path: Path
    manifest: dict
    labels: list[str]
    _tokenizer: object = field(default=None, repr=False)

    @property
    def layout(self) -> str:
        return self.manifest["layout"]

    @property
    def exit_layers(self) -> list[int]:
        return list(self.manifest["exits"]["layers"])

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def pooling(self) -> str:
        """``cls`` or ``mean`` (manifest ``model.pooling``); a ``mean`` head is fed the attention mask."""
        return self.manifest["model"].get("pooling", "cls")

    def graph_file(self, name: str) -> Path:
        return self.path / self.manifest["graphs"][name]["file"]

    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_file(self.path / self.manifest["tokenizer"]["file"])
        return self._tokenizer


def _fail(path: Path, what: str) -> BundleError:
    return BundleError(f"bundle '{path}': {what}")


def validate_manifest(manifest: dict, path: Path = Path(".")) -> None:
    """Raise ``BundleError`` unless ``manifest`` has the structure BUNDLE.md describes."""
    if not isinstance(manifest, dict):
        raise _fail(path, "manifest.json is not a JSON object; export the bundle again.")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise _fail(path, f"manifest.json lacks {', '.join(missing)}; export the bundle again with this edgekit.")
    if manifest["format_version"] != FORMAT_VERSION:
        raise _fail(path, f"manifest format_version {manifest['format_version']!r} is not supported "
                          f"(this runtime reads version {FORMAT_VERSION}); use the matching edgekit_device.")
    if manifest["format"] not in FORMATS:
        raise _fail(path, f"format {manifest['format']!r} is not one of {', '.join(FORMATS)}.")
    if manifest["precision"] not in PRECISIONS:
        raise _fail(path, f"precision {manifest['precision']!r} is not one of {', '.join(PRECISIONS)}.")
    layout = manifest["layout"]
    if layout not in LAYOUTS:
        raise _fail(path, f"layout {layout!r} is not one of {', '.join(LAYOUTS)}.")
    graphs = manifest["graphs"]
    if not isinstance(graphs, dict) or sorted(graphs) != sorted(LAYOUTS[layout]):
        raise _fail(path, f"a {layout} bundle needs the graphs {', '.join(LAYOUTS[layout])}, "
                          f"the manifest lists {', '.join(graphs) if isinstance(graphs, dict) else graphs!r}.")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise _fail(path, "manifest 'files' must map file names to their bytes and sha256.")
    for name, graph in graphs.items():
        for key in ("file", "inputs", "outputs"):
            if key not in graph:
                raise _fail(path, f"graph {name!r} in manifest.json lacks {key!r}.")
        if graph["file"] not in files:
            raise _fail(path, f"graph {name!r} file '{graph['file']}' is not listed in manifest 'files'.")
        for tensor in graph["inputs"] + graph["outputs"]:
            if not {"name", "dtype", "shape", "axes"} <= set(tensor) or len(tensor["shape"]) != len(tensor["axes"]):
                raise _fail(path, f"graph {name!r} has a malformed tensor entry {tensor!r} (needs name, dtype, "
                                  "shape and axes of equal length).")
    model = manifest["model"]
    if not isinstance(model, dict):
        raise _fail(path, "manifest 'model' must be an object describing the model; export the bundle again.")
    pooling = model.get("pooling", "cls")
    if pooling not in POOLINGS:
        raise _fail(path, f"model.pooling {pooling!r} is not one of {', '.join(POOLINGS)}; export the bundle again "
                          "with this edgekit.")
    if layout == "per-layer":
        takes = sorted(t["name"] for t in graphs["head"]["inputs"])
        if takes != sorted(HEAD_INPUTS[pooling]):
            raise _fail(path, f"a {pooling}-pooled head takes {', '.join(HEAD_INPUTS[pooling])}, but graph 'head' in "
                              f"manifest.json takes {', '.join(takes) or 'nothing'}; export the bundle again.")
    exits = manifest["exits"]
    layers = exits.get("layers") if isinstance(exits, dict) else None
    if not layers or not all(isinstance(k, int) and k >= 1 for k in layers):
        raise _fail(path, "manifest 'exits.layers' must list the exit layers (integers from 1).")
    if layout == "fixed" and len(layers) != 1:
        raise _fail(path, "a fixed bundle has exactly one exit layer.")
    if not isinstance(manifest["max_length"], int) or manifest["max_length"] < 2:
        raise _fail(path, f"max_length {manifest['max_length']!r} must be an integer of at least 2.")
    for key in ("tokenizer", "labels"):
        entry = manifest[key]
        if not isinstance(entry, dict) or entry.get("file") not in files:
            raise _fail(path, f"manifest {key!r} must name a file listed in 'files'.")


def verify_files(path: Path, manifest: dict) -> None:
    """Every file the manifest lists exists with the recorded size and sha256."""
    for name, entry in manifest["files"].items():
        target = path / name
        if path.resolve() not in target.resolve().parents:
            raise _fail(path, f"manifest lists a file outside the bundle ('{name}').")
        if not target.is_file():
            raise _fail(path, f"file '{name}' listed in manifest.json is missing; export or download the bundle again.")
        size = target.stat().st_size
        if size != entry.get("bytes"):
            raise _fail(path, f"file '{name}' has {size} bytes, manifest.json says {entry.get('bytes')}; the bundle is "
                              "corrupted or truncated, export or download it again.")
        if sha256_file(target) != entry.get("sha256"):
            raise _fail(path, f"file '{name}' does not match its sha256 in manifest.json; the bundle is corrupted, "
                              "export or download it again.")


def load_bundle(path, verify: bool = True) -> Bundle:
    """Open the bundle directory ``path``: validate the manifest and (``verify``) every file's sha256."""
    path = Path(path)
    if path.is_file():
        from .pack import MAGIC

        with open(path, "rb") as f:
            if f.read(len(MAGIC)) == MAGIC:
                raise BundleError(f"'{path}' is a packed bundle; restore it with edgekit_device.unpack(pack, out_dir) "
                                  "and load the directory.")
        raise BundleError(f"'{path}' is a file, not a bundle directory; pass the directory that holds manifest.json.")
    if not path.is_dir():
        raise BundleError(f"bundle directory '{path}' does not exist; check the path.")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"'{path}' is not a bundle (it has no manifest.json); pass a directory written by `edgekit export`.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"manifest.json is not valid JSON ({e}); export the bundle again.") from None
    validate_manifest(manifest, path)
    if verify:
        verify_files(path, manifest)
    try:
        labels = json.loads((path / manifest["labels"]["file"]).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"'{manifest['labels']['file']}' is not valid JSON ({e}).") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise _fail(path, f"'{manifest['labels']['file']}' must be a JSON list of label names.")
    num_labels = manifest["model"].get("num_labels")
    if num_labels is not None and len(labels) != num_labels:
        raise _fail(path, f"'{manifest['labels']['file']}' has {len(labels)} labels, the model has {num_labels}.")
    return Bundle(path=path, manifest=manifest, labels=labels)
