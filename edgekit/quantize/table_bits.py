"""Fewer bits for an embedding table: its weights snapped to ``2**bits - 1`` symmetric levels.

``edgekit export --embedding-bits N`` (recipe key ``export.embedding_bits``) applies ``snap_levels``
to the word-embedding table of the model copy it exports. The int8 export then stores at most
``2**bits - 1`` distinct codes per row (quantizing is a function of the value, so 15 distinct
floats give at most 15 distinct int8 codes), which the packed download's entropy coder turns into
fewer bytes. The parity gate still compares the bundle with the original checkpoint, so it
measures what the snapping costs.

The step follows the int8 scale of the table (``edgekit export --embedding-scale``, ``SCALES``):
with one scale per table (``"table"``, the default, and the only scheme of ONNX Runtime's int8
Gather) the table gets one step, so its codes are the same 15 integers ``round(k * 127 / L)``
everywhere; with one scale per row (``"row"``, TFLite only) each row gets its own step, since
one step for the table would land on different codes in every row and the table as a whole would
still use most of the 255 codes. Measured on the trained paper-shape table (12,094 x 128, 80%
pruned), bytes of its non-zero int8 codes under xz / zlib: one scale per table as it is 237,852 /
238,193, per-row steps 190,512 / 212,777, one step per table 94,936 / 99,992; one scale per row
as it is 277,044 / 277,332, per-row steps 132,476 / 137,999 (relative error of the table: 0.064
per row, 0.103 per table).
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import UserError

DEFAULT_BITS = 8  # no snapping: the table is quantized as the format does by itself
MIN_BITS = 2      # 3 levels (-1, 0, 1) per row; 1 bit would leave no non-zero symmetric level


def check_bits(bits) -> int:
    """``bits`` if it is an integer in 2..8, else one ``UserError`` sentence."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= DEFAULT_BITS:
        raise UserError(f"embedding bits must be an integer from {MIN_BITS} to {DEFAULT_BITS} (8: the table stays "
                        f"as int8 export stores it), got {bits!r}.")
    return int(bits)


SCOPES = ("row", "table")
SCALES = ("table", "row")  # what one int8 scale of the exported table covers: --embedding-scale
DEFAULT_SCALE = "table"    # as ONNX Runtime's int8 Gather: no float32 scale per row to download


def check_scale(scale, format: str | None = None) -> str:
    """``scale`` if it is one of ``SCALES`` (and ``format`` can store it), else one ``UserError`` sentence."""
    if scale not in SCALES:
        raise UserError(f"embedding scale must be one of {', '.join(SCALES)} (one int8 scale for the word-embedding "
                        f"table, or one per row), got {scale!r}.")
    if scale == "row" and format == "onnx":
        raise UserError("--embedding-scale row needs TFLite (onnxruntime's int8 Gather has one scale per table); "
                        "use --format tflite or --embedding-scale table.")
    return scale

def snap_levels(table: np.ndarray, bits: int, scope: str = "row") -> np.ndarray:
    """``table`` (rows, dims) on ``2**bits - 1`` symmetric levels, one step per row or per table.

    With ``m = max |W|`` over the row (``scope="row"``) or the whole table (``"table"``) and
    ``L = 2**(bits-1) - 1``:

        step = m / L,   W'[r, j] = step * round(W[r, j] / step)    (integers -L..L)

    so a row takes at most ``2L + 1 = 2**bits - 1`` values, the largest magnitude is kept exactly
    and zeros stay exactly zero (pruning masks survive; a non-zero under ``step / 2`` also becomes
    zero). An all-zero row stays zero. ``bits == 8`` returns the table unchanged (a copy): int8
    export quantizes it by itself. Rounding is half to even (numpy's).
    """
    bits = check_bits(bits)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    table = np.asarray(table, dtype=np.float32)
    if table.ndim != 2:
        raise ValueError(f"an embedding table is 2-D (rows, dims), got shape {table.shape}")
    if bits == DEFAULT_BITS:
        return table.copy()
    levels = 2 ** (bits - 1) - 1
    amax = np.abs(table).max(axis=1, keepdims=True) if scope == "row" else np.abs(table).max(keepdims=True)
    step = np.where(amax > 0, amax / levels, 1.0).astype(np.float32)
    return (np.round(table / step) * step).astype(np.float32)


def snap_facts(original: np.ndarray, snapped: np.ndarray, bits: int, scope: str) -> dict:
    """What snapping did: bits, levels per row, the step's scope, relative error
    ``||W' - W||_F / ||W||_F`` and the count of non-zero weights that became zero."""
    original = np.asarray(original, dtype=np.float32)
    norm = float(np.linalg.norm(original))
    error = float(np.linalg.norm(snapped - original)) / norm if norm else 0.0
    return {"bits": int(bits), "levels_per_row": 2 ** int(bits) - 1, "step_per": scope,
            "relative_error": round(error, 5), "newly_zero": int(((snapped == 0) & (original != 0)).sum())}


def word_embedding_table(model):
    """The word-embedding ``nn.Embedding`` of an ``EarlyExitClassifier``, an ALBERT classifier or a
    ``LateInteractionClassifier`` (its ``base``: ALBERT or BERT)."""
    base = getattr(model, "base", None)
    if base is None:
        base = getattr(model, "model", model).albert
    return base.embeddings.word_embeddings


def snap_hint(error, bits: int, snapped: dict | None):
    """A failed parity gate's error, with the way out snapping adds: a higher ``--embedding-bits``."""
    from edgekit.errors import UserError

    if not snapped:
        return error
    return UserError(f"{str(error).rstrip('.')}; or raise --embedding-bits above {bits} (each row of the "
                     f"word-embedding table is on {snapped['levels_per_row']} levels now).")


def snap_word_embeddings(model, bits: int, scope: str = DEFAULT_SCALE) -> dict | None:
    """Snap the word-embedding table of ``model`` (an ``EarlyExitClassifier``, ALBERT classifier or
    ``LateInteractionClassifier``; an export copy, never the user's model) in place, one step per ``scope`` (the table's int8
    scale: ``"table"`` or ``"row"``); returns ``snap_facts`` (None for 8 bits)."""
    import torch

    bits = check_bits(bits)
    if bits == DEFAULT_BITS:
        return None
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    weight = word_embedding_table(model).weight
    original = weight.detach().cpu().float().numpy().copy()
    snapped = snap_levels(original, bits, scope)
    with torch.no_grad():
        weight.copy_(torch.from_numpy(snapped).to(weight.dtype))
    return snap_facts(original, snapped, bits, scope)
