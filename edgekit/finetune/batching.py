"""Length-bucketed batches: CPU time goes to real tokens, not padding.

``TokenizedCorpus.collate`` already pads a batch only to its longest example (dynamic padding). With
random batches that longest example is still near the tail of the length distribution, so most of a
batch is padding on a task like TNEWS (titles of 5..60 tokens). ``LengthBucketedBatches`` draws a
seeded permutation per epoch as ``ResumableBatches`` does, cuts it into pools of ``pool_batches``
global batches, sorts each pool by length and cuts it into batches of similar length, then shuffles
the batches' order (Hugging Face's ``group_by_length`` does the same with pools of 50). Every example
is still seen once per epoch in a random context; only which examples share a batch changes.

The position (epoch, batch in epoch) is the whole state: a resumed run sees the batches an
uninterrupted run would have.
"""

from __future__ import annotations

import random

from edgekit.data import ResumableBatches


def bucketed_order(lengths: list[int], batch_size: int, pool_batches: int, seed: int) -> list[list[int]]:
    """The batches of one epoch: indices of examples, each batch of similar lengths.

    A seeded permutation of all indices is cut into pools of ``pool_batches · batch_size``; each pool
    is sorted by length (longest first; ties by position in the permutation) and cut into batches;
    the full batches of every pool are then shuffled together (the last partial batch is dropped, as
    ``ResumableBatches`` drops it).
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = max(1, pool_batches) * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: -lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    batches = [b for b in batches if len(b) == batch_size][: len(lengths) // batch_size]
    rng.shuffle(batches)
    return batches


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    """Token positions a model computes for ``batches`` under dynamic padding: Σ_b |b| · max_{i∈b} len_i."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


class LengthBucketedBatches(ResumableBatches):
    """``ResumableBatches`` whose batches group examples of similar length (``bucketed_order``).

    Under data parallelism each global batch (``batch_size × world_size`` similar lengths) is split
    across the ranks, so every process pads to about the same width.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 pool_batches: int = 50):
        super().__init__(len(lengths), batch_size, seed, rank, world_size)
        self.lengths, self.pool_batches = list(lengths), pool_batches
        self._order: tuple[int, list[list[int]]] | None = None

    def _epoch_batches(self) -> list[list[int]]:
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, bucketed_order(self.lengths, self.global_batch, self.pool_batches,
                                                      self.seed + self.epoch))
        return self._order[1]

    def next(self) -> list[int]:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        batch = self._epoch_batches()[self.position]
        self.position += 1
        return batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]


def make_batches(data, batch_size: int, seed: int, rank: int, world_size: int, pool_batches: int):
    """Length-bucketed batches over ``data`` when it has token ids (``TokenizedCorpus``) and
    ``pool_batches`` > 0; plain random batches otherwise."""
    ids = getattr(data, "ids", None)
    if pool_batches > 0 and isinstance(ids, list):
        return LengthBucketedBatches([len(r) for r in ids], batch_size, seed, rank, world_size, pool_batches)
    return ResumableBatches(len(data), batch_size, seed, rank, world_size)
