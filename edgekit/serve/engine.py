"""One micro-batch through the cache and the model, and the queue that gathers micro-batches.

``SegmentEngine.run`` (blocking, one thread): look every distinct segment of the batch up in the
cache, encode only the misses in one ``encode_segments`` call, store them, then interact all the
requests in one ``interact`` call. ``MicroBatcher`` (asyncio) collects concurrent requests for at
most ``max_wait_ms`` or ``max_batch`` requests, runs the engine in a worker thread, and refuses new
requests once ``max_queue`` wait (``Overloaded``: the server answers 503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edgekit.serve.cache import segment_key
from edgekit_device.segments import SegmentError

log = logging.getLogger("edgekit.serve")


def softmax(logits: np.ndarray) -> np.ndarray:
    """p_i = exp(z_i - max z) / Σ_j exp(z_j - max z) along the last axis (float64 for the sum).

    Example: (0, ln 3) -> (0.25, 0.75)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Prediction:
    logits: np.ndarray   # (n_labels,) float32
    hits: int            # this request's segments found in the cache
    misses: int          # ... not found (computed, or computed once for the whole batch)


class SegmentEngine:
    """The model and its segment cache; ``run`` is called from one thread at a time."""

    def __init__(self, model, cache, metrics=None):
        self.model = model
        self.cache = cache
        self.metrics = metrics
        self.encoded_segments = 0   # segments the model encoded since start (tests count recomputation)

    def run(self, requests: list[list[str]]) -> list[Prediction | Exception]:
        """Predictions for ``requests`` (each a list of segment texts), or the exception of the one that failed."""
        h = self.model.model_hash
        texts = list(dict.fromkeys(t for r in requests for t in r))  # distinct, in first-seen order
        keys = [segment_key(h, t) for t in texts]
        found = dict(zip(texts, self.cache.get_many(keys)))
        missing = [t for t in texts if found[t] is None]
        if missing:
            encoded = self.model.encode_segments(missing)
            self.encoded_segments += len(missing)
            fresh = dict(zip(missing, encoded))
            found.update(fresh)
            self.cache.put_many({segment_key(h, t): a for t, a in fresh.items()})
        cached = set(texts) - set(missing)
        parts = [[found[t] for t in r] for r in requests]
        try:
            logits = self.model.interact(parts)
            rows: list = list(logits)
        except SegmentError:
            rows = []  # one bad request must not fail the batch: find it by running each alone
            for p in parts:
                try:
                    rows.append(self.model.interact([p])[0])
                except SegmentError as e:
                    rows.append(e)
        out: list[Prediction | Exception] = []
        for r, row in zip(requests, rows):
            if isinstance(row, Exception):
                out.append(row)
            else:
                hits = sum(t in cached for t in r)
                out.append(Prediction(np.asarray(row, dtype=np.float32), hits, len(r) - hits))
        return out


class Overloaded(Exception):
    """The queue is full: the client should retry later (HTTP 503)."""


class MicroBatcher:
    """Gathers concurrent requests into batches for ``run_batch`` (a blocking function, run in one worker thread)."""

    def __init__(self, run_batch, max_batch: int, max_wait_ms: float, max_queue: int, on_batch=None):
        self.run_batch = run_batch
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # one thread: the model and the LRU are used by one batch at a time; torch parallelizes inside
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-batch")

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="edgekit-microbatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit_many(self, items: list) -> list:
        """Results of ``items`` in order (each a result or an exception); ``Overloaded`` if they do not all fit."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the micro-batcher is not running")
        if self.max_queue - self._queue.qsize() < len(items):
            raise Overloaded()
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:  # no await in this loop: all of them fit, checked above
            fut = loop.create_future()
            self._queue.put_nowait((item, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # clients that gave up
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [item for item, _ in batch])
            except Exception as e:  # a bug in the model or the cache: answer these requests, keep serving
                log.exception("a batch of %d requests failed", len(batch))
                results = [e] * len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
