"""The segment cache: the first L' layers' output of a segment, stored once per (model, text).

Two backends with one interface (``get_many`` / ``put_many``), both safe to lose:

- ``LRUCache``: in this process, bounded in bytes (the arrays' bytes plus their keys).
- ``RedisCache``: shared by every process and replica that points at the same Redis. Arrays are
  stored as raw float32 bytes behind a small header (``encode_array``), never pickled. When Redis
  cannot be reached every call answers "not cached" at once, the outage is logged once and
  counted, and Redis is tried again after a backoff that doubles up to ``retry_max_s``.

Keys (``segment_key``): sha256(model_hash + "\\n" + text), so two models never share an entry and a
segment's entry serves every position it takes in a request.
"""

from __future__ import annotations

import hashlib
import math
import logging
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import UserError

log = logging.getLogger("edgekit.serve")

# b"EKS1", then ndim (uint32), then each dimension (uint32), then the float32 values, all little-endian.
MAGIC = b"EKS1"
KEY_PREFIX = "edgekit:segment:"
# What an LRU entry costs beyond its array: the OrderedDict node, the key string, the ndarray header.
ENTRY_OVERHEAD = 200


def segment_key(model_hash: str, text: str) -> str:
    """The cache key of ``text`` under a model: hex sha256 of ``model_hash + "\\n" + text`` (UTF-8).

    The separator keeps ("ab", "c") and ("a", "bc") apart even for a model hash of another length."""
    return hashlib.sha256(f"{model_hash}\n{text}".encode("utf-8")).hexdigest()


def encode_array(array: np.ndarray) -> bytes:
    """An array as bytes without pickle: MAGIC, ndim, the shape (uint32 each), then float32 values (little-endian).

    Example: a (2, 3) array -> b"EKS1" + <2> + <2><3> + 24 bytes of values, 4 + 4 + 8 + 24 = 40 bytes."""
    a = np.ascontiguousarray(array, dtype="<f4")
    return MAGIC + struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape) + a.tobytes()


def decode_array(blob: bytes) -> np.ndarray:
    """``encode_array``'s inverse; a ValueError for anything that is not exactly such bytes."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise ValueError("not an edgekit segment entry")
    (ndim,) = struct.unpack_from("<I", blob, 4)
    if ndim > 8 or len(blob) < 8 + 4 * ndim:
        raise ValueError("truncated edgekit segment entry")
    shape = struct.unpack_from(f"<{ndim}I", blob, 8)
    start = 8 + 4 * ndim
    if len(blob) - start != 4 * int(np.prod(shape, dtype=np.int64)):
        raise ValueError("edgekit segment entry has the wrong size for its shape")
    return np.frombuffer(blob, dtype="<f4", offset=start).reshape(shape).astype(np.float32)


def parse_bytes(text, option: str = "--cache-bytes") -> int:
    """A byte count from ``512``, ``64k``, ``256M``, ``256MiB``, ``1G`` (powers of 1024); a UserError otherwise."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = (s[:-1], s[-1]) if s and s[-1] in units else (s, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise UserError(f"{option} must be a size such as 268435456, 256M or 1G, got {text!r}.")
    return int(value)


@dataclass
class CacheStats:
    """Counters since start (what ``/metrics`` reads): lookups found / not found, backend failures."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    evictions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class LRUCache:
    """Least recently used entries dropped first once their bytes pass ``max_bytes``."""

    backend = "lru"

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    @staticmethod
    def cost(key: str, array: np.ndarray) -> int:
        """What an entry counts against ``max_bytes``: its array's bytes, its key, ENTRY_OVERHEAD."""
        return int(array.nbytes) + len(key) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def up(self) -> bool:
        return True

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        with self._lock:
            out = []
            for k in keys:
                a = self._entries.get(k)
                if a is not None:
                    self._entries.move_to_end(k)
                out.append(a)
        self._count(out)
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            for k, a in items.items():
                cost = self.cost(k, a)
                if cost > self.max_bytes:
                    continue  # one entry larger than the whole cache would only evict everything else
                old = self._entries.pop(k, None)
                if old is not None:
                    self.bytes -= self.cost(k, old)
                self._entries[k] = a
                self.bytes += cost
                while self.bytes > self.max_bytes:
                    k_old, a_old = self._entries.popitem(last=False)
                    self.bytes -= self.cost(k_old, a_old)
                    self.stats.evictions += 1

    def _count(self, found: list) -> None:
        hits = sum(a is not None for a in found)
        with self.stats.lock:
            self.stats.hits += hits
            self.stats.misses += len(found) - hits

    def describe(self) -> dict:
        return {"backend": self.backend, "up": True, "entries": len(self), "bytes": self.bytes,
                "max_bytes": self.max_bytes}

    def close(self) -> None:
        pass


def backoff_delay(failures: int, base_s: float, max_s: float) -> float:
    """Seconds before the next try after ``failures`` failures in a row: min(max_s, base_s * 2^(failures-1))."""
    return min(max_s, base_s * 2 ** max(failures - 1, 0))


class RedisCache:
    """Entries in Redis under ``edgekit:segment:<key>``; an outage costs recomputation, never an answer."""

    backend = "redis"

    def __init__(self, url: str, timeout_s: float = 0.25, retry_base_s: float = 0.5, retry_max_s: float = 10.0,
                 ttl_s: int | None = None):
        import redis

        self.url = url
        self.ttl_s = ttl_s
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                retry_on_timeout=False)
        except ValueError as e:
            raise UserError(f"--cache {url!r} is not a Redis URL ({e}); use redis://HOST:PORT/DB.") from None
        self._errors = (redis.exceptions.RedisError, OSError)
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self.last_error = ""

    @property
    def up(self) -> bool:
        return self._failures == 0

    def _available(self) -> bool:
        """False while backing off after a failure: skip Redis rather than wait on a dead socket."""
        with self._lock:
            return self._failures == 0 or time.monotonic() >= self._retry_at

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            self._failures += 1
            self._retry_at = time.monotonic() + backoff_delay(self._failures, self.retry_base_s, self.retry_max_s)
            first = self._failures == 1
            self.last_error = f"{type(error).__name__}: {error}"
        with self.stats.lock:
            self.stats.errors += 1
        if first:  # once per outage, not once per request
            log.warning("segment cache %s unreachable (%s); computing segments without it and retrying with backoff",
                        _safe_url(self.url), self.last_error)

    def _succeeded(self) -> None:
        with self._lock:
            was_down, self._failures = self._failures > 0, 0
        if was_down:
            log.warning("segment cache %s reachable again; using it", _safe_url(self.url))

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = [None] * len(keys)
        if keys and self._available():
            try:
                blobs = self._client.mget([KEY_PREFIX + k for k in keys])
                self._succeeded()
            except self._errors as e:
                self._failed(e)
                blobs = [None] * len(keys)
            for i, blob in enumerate(blobs):
                if blob is None:
                    continue
                try:
                    out[i] = decode_array(blob)
                except ValueError:  # someone else's value under our prefix: recompute, overwrite
                    with self.stats.lock:
                        self.stats.errors += 1
        hits = sum(a is not None for a in out)
        with self.stats.lock:
            self.stats.hits += hits
            self.stats.misses += len(out) - hits
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        if not items or not self._available():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for k, a in items.items():
                pipe.set(KEY_PREFIX + k, encode_array(a), ex=self.ttl_s)
            pipe.execute()
            self._succeeded()
        except self._errors as e:
            self._failed(e)

    def describe(self) -> dict:
        return {"backend": self.backend, "url": _safe_url(self.url), "up": self.up,
                **({"last_error": self.last_error} if not self.up else {})}

    def close(self) -> None:
        try:
            self._client.close()
        except self._errors:
            pass


def _safe_url(url: str) -> str:
    """The URL without a password (logs and /health must not show it)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def make_cache(spec: str, max_bytes: int, **redis_options):
    """``lru`` -> ``LRUCache(max_bytes)``; ``redis://...`` / ``rediss://...`` / ``unix://...`` -> ``RedisCache``."""
    spec = (spec or "lru").strip()
    if spec == "lru":
        return LRUCache(max_bytes)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(spec, **redis_options)
    raise UserError(f"--cache must be 'lru' or a Redis URL such as redis://127.0.0.1:6379/0, got {spec!r}.")
