"""Fewer bits for an embedding table: its weights snapped to ``2**bits - 1`` symmetric levels.

``edgekit export --embedding-bits N`` (recipe key ``export.embedding_bits``) applies ``snap_levels``
to the word-embedding table of the model copy it exports. The int8 export then stores at most
``2**bits - 1`` distinct codes per row (quantizing is a function of the value, so 15 distinct
floats give at most 15 distinct int8 codes), which the packed download's entropy coder turns into
fewer bytes. The parity gate still compares the bundle with the original checkpoint, so it
measures what the snapping costs.

The step follows the format's own table scale (``FORMAT_SCOPE``): TFLite stores the table with one
int8 scale per row, so each row gets its own step and its codes are the same 15 integers
``round(k * 127 / L)`` in every row; ONNX stores it with one scale per table, where per-row steps
would land on different codes in every row and the table as a whole would still use most of the
255 codes. Measured on the trained paper-shape table (12,094 x 128, 80% pruned), bytes of its
non-zero int8 codes under xz / zlib: ONNX as today 237,852 / 238,193, per-row steps 190,512 /
212,777, one step per table 94,936 / 99,992; TFLite as today 277,044 / 277,332, per-row steps
132,476 / 137,999 (relative error of the table: 0.064 per row, 0.103 per table).
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
FORMAT_SCOPE = {"tflite": "row", "onnx": "table"}  # what one int8 scale of the format's table covers


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


def snap_word_embeddings(model, bits: int, format: str) -> dict | None:
    """Snap the word-embedding table of ``model`` (an ``EarlyExitClassifier`` or ALBERT classifier;
    an export copy, never the user's model) in place, one step per ``FORMAT_SCOPE[format]``;
    returns ``snap_facts`` (None for 8 bits)."""
    import torch

    bits = check_bits(bits)
    if bits == DEFAULT_BITS:
        return None
    scope = FORMAT_SCOPE[format]
    albert = getattr(model, "model", model).albert
    weight = albert.embeddings.word_embeddings.weight
    original = weight.detach().cpu().float().numpy().copy()
    snapped = snap_levels(original, bits, scope)
    with torch.no_grad():
        weight.copy_(torch.from_numpy(snapped).to(weight.dtype))
    return snap_facts(original, snapped, bits, scope)
