"""``edgekit serve``'s settings: one dataclass the CLI, ``serve()``, uvicorn workers and Ray replicas share.

Defaults: loopback only (a model server is not exposed to a network unless asked); micro-batches of
at most 32 requests gathered for at most 5 ms (one request's wait at low load, a full batch under
load); a 256 MiB in-process segment cache; 1 MiB request bodies.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from edgekit.errors import UserError


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    cache: str = "lru"                 # 'lru' or redis://HOST:PORT/DB (shared by workers and replicas)
    cache_bytes: int = 256 << 20       # the LRU's bound: arrays + keys
    max_batch: int = 32                # requests interacted in one call
    max_wait_ms: float = 5.0           # how long the first request of a batch waits for company
    max_queue: int = 256               # requests waiting beyond the running batch; more -> 503
    max_body_bytes: int = 1 << 20      # a larger body -> 413
    max_segment_chars: int = 2000      # a longer segment -> 422 (tokens past max_segment_tokens are cut anyway)
    workers: int = 1                   # uvicorn worker processes (one machine)
    ray: bool = False                  # run replicas through Ray Serve
    replicas: int = 1                  # Ray Serve replicas
    redis_timeout_s: float = 0.25      # a Redis call slower than this counts as an outage
    redis_retry_max_s: float = 10.0    # longest wait before trying an unreachable Redis again
    log_level: str = "info"
    late_layers: int | None = None     # split a plain classifier checkpoint here (untrained segment embedding)

    def check(self) -> ServeConfig:
        """Each value in range, or a one-sentence UserError naming the option."""
        def positive(name, value, low=1, high=None):
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value >= low \
                and (high is None or value <= high)
            if not ok:
                top = f" and at most {high}" if high is not None else ""
                raise UserError(f"--{name.replace('_', '-')} must be a number of at least {low}{top}, got {value!r}.")

        positive("port", self.port, 0, 65535)
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_segment_chars", "workers", "replicas"):
            positive(name, getattr(self, name))
        positive("cache_bytes", self.cache_bytes, 0)
        positive("max_wait_ms", self.max_wait_ms, 0, 10_000)
        positive("redis_timeout_s", self.redis_timeout_s, 0.001)
        positive("redis_retry_max_s", self.redis_retry_max_s, 0.01)
        if self.ray and self.workers != 1:
            raise UserError("--workers and --ray both start processes; with --ray use --replicas N instead.")
        if self.replicas != 1 and not self.ray:
            raise UserError("--replicas needs --ray (Ray Serve runs the replicas); on one machine use --workers N.")
        cache = (self.cache or "").strip()
        if cache != "lru" and not cache.startswith(("redis://", "rediss://", "unix://")):
            raise UserError(f"--cache must be 'lru' or a Redis URL such as redis://127.0.0.1:6379/0, got {self.cache!r}.")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})
