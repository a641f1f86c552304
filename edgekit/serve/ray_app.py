"""``edgekit serve --ray --replicas N``: the same app in N Ray Serve replicas (the ``serve`` extra).

Ray Serve owns the replicas, their restarts and the HTTP proxy in front of them; each replica is a
whole ``Server`` (model, micro-batcher, metrics) built from the model's path. Replicas share
segments only through ``--cache redis://...``; with the default LRU each keeps its own.
``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` if set, else starts a local one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from edgekit.errors import UserError
from edgekit.serve.config import ServeConfig

log = logging.getLogger("edgekit.serve")
APP_NAME = "edgekit"


def _ray():
    try:
        import ray
        from ray import serve as ray_serve
    except ImportError:
        raise UserError("--ray needs Ray Serve; install it with `pip install 'edgekit[serve]'`.") from None
    return ray, ray_serve


def replica_class():
    """The deployment class: an ingress whose ASGI app is built in the replica, after the model loads."""
    _, ray_serve = _ray()

    @ray_serve.ingress()
    class EdgekitReplica:
        def __init__(self, model: str, config_json: str):
            from edgekit.serve.app import Server, configure_logging

            config = ServeConfig.from_json(config_json)
            configure_logging(config.log_level)
            self._server = Server(model, config)

        def __serve_build_asgi_app__(self):
            return self._server.app()

    return EdgekitReplica


def deploy(model: Path, config: ServeConfig):
    """Start Ray Serve's proxy on ``config.host:port`` and the replicas; returns once they answer."""
    ray, ray_serve = _ray()
    if not ray.is_initialized():
        # Ray Serve gives its proxy 5 s to report ready and then restarts it; on a loaded 2-core machine
        # startup takes longer and never succeeds. The processes ray.init starts inherit these (a value
        # the user set wins).
        for name, seconds in (("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60"),
                              ("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")):
            os.environ.setdefault(name, seconds)
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    # a replica asks for one CPU where the cluster has one per replica; on a smaller machine a share,
    # so that N replicas start rather than wait for CPUs that do not exist
    per_replica = min(1.0, cpus / config.replicas)
    ray_serve.start(http_options={"host": config.host, "port": config.port})
    deployment = ray_serve.deployment(replica_class(), name="EdgekitReplica", num_replicas=config.replicas,
                                      ray_actor_options={"num_cpus": per_replica},
                                      max_ongoing_requests=config.max_queue)
    ray_serve.run(deployment.bind(str(model), config.to_json()), name=APP_NAME, route_prefix="/")
    return ray_serve


def serve_ray(model: Path, config: ServeConfig) -> None:
    """``deploy``, then wait until interrupted, then shut Ray Serve down."""
    ray, ray_serve = _ray()
    if config.cache == "lru" and config.replicas > 1:
        log.warning("each of the %d replicas keeps its own segment cache; pass --cache redis://HOST:PORT/DB to "
                    "share one", config.replicas)
    from edgekit.serve.app import load_model

    load_model(model, config.late_layers)  # a bad model: one sentence here, not a failed replica's traceback
    deploy(model, config)
    log.warning("serving %s with %d Ray Serve replicas on http://%s:%d", model, config.replicas, config.host,
                config.port)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:  # Ctrl+C is how this command ends: not an error
        log.warning("stopping the Ray Serve replicas")
    finally:
        ray_serve.shutdown()
        ray.shutdown()
