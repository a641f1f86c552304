"""Segmented examples as training batches: packed in one sequence each (Figure 4).

``SegmentCorpus`` is ``edgekit.data.TokenizedCorpus`` for lists of segments (same ``len`` and
``collate``), so the fine-tuning loop is the same one.
"""

from __future__ import annotations

import numpy as np
import torch

from edgekit_device.segments import pack_layout


def fit_segments(segments: list[str], max_segments: int) -> list[str]:
    """At most ``max_segments`` segments: the extra ones are joined onto the last kept one, in order.

    Example: (a, b, c, d) with 2 -> (a, bcd). Nothing is dropped here; the joined segment is
    then truncated to ``max_segment_tokens`` like any other."""
    if len(segments) <= max_segments:
        return list(segments)
    return [*segments[:max_segments - 1], "".join(segments[max_segments - 1:])]


class SegmentCorpus:
    """Token ids of every segment alone (``[CLS] text [SEP]``, ≤ ``max_segment_tokens``), examples packed by ``collate``."""

    def __init__(self, tokenizer, examples: list[list[str]], max_segments: int, max_segment_tokens: int,
                 labels=None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.labels = list(labels) if labels is not None else None
        fitted = [fit_segments(segs, max_segments) for segs in examples]
        self.merged = sum(len(f) != len(e) for f, e in zip(fitted, examples))  # reported by finetune
        flat = [s for segs in fitted for s in segs]
        ids = []
        for start in range(0, len(flat), 4096):
            ids.extend(tokenizer(flat[start:start + 4096], truncation=True, max_length=max_segment_tokens)["input_ids"])
        self.examples: list[list[list[int]]] = []
        at = 0
        for segs in fitted:
            self.examples.append(ids[at:at + len(segs)])
            at += len(segs)

    def __len__(self) -> int:
        return len(self.examples)

    def collate(self, indices) -> dict:
        """``input_ids``, ``segment_ids`` (-1: padding), ``position_ids`` (restarting per segment), ``attention_mask``,
        all (B, T); ``labels``."""
        rows = [self.examples[i] for i in indices]
        segment_ids, position_ids = pack_layout([[len(s) for s in row] for row in rows])
        input_ids = np.full(segment_ids.shape, self.pad_id, dtype=np.int64)
        for r, row in enumerate(rows):
            flat = [t for s in row for t in s]
            input_ids[r, :len(flat)] = flat
        batch = {"input_ids": torch.from_numpy(input_ids), "segment_ids": torch.from_numpy(segment_ids),
                 "position_ids": torch.from_numpy(position_ids),
                 "attention_mask": torch.from_numpy((segment_ids >= 0).astype(np.int64))}  # the trainer counts tokens
        if self.labels is not None:
            batch["labels"] = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        return batch
