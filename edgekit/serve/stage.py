"""``serve``: run the app under uvicorn (one process, ``workers`` processes, or Ray Serve replicas).

``serve(model, config)`` blocks until interrupted (what ``edgekit serve`` calls);
``start_server(model, config)`` runs it in a thread of this process and returns once it answers
(for scripts, benchmarks and tests): ``with start_server(m) as s: requests to s.url``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from edgekit.errors import UserError
from edgekit.serve.app import CONFIG_ENV, Server, configure_logging
from edgekit.serve.config import ServeConfig

log = logging.getLogger("edgekit.serve")


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for ``host:port`` (port 0: any free port), or a one-sentence UserError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host!r} is not an address this machine can listen on ({e.strerror}).") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or stop the "
                        "program using it.") from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app, config: ServeConfig, **kw):
    import uvicorn

    # uvicorn's own access log line per request would dominate the log under load; /metrics counts them
    return uvicorn.Config(app, log_level=config.log_level, access_log=False, lifespan="on",
                          timeout_graceful_shutdown=5, **kw)


class RunningServer:
    """A server answering in a thread of this process; ``stop()`` (or leaving ``with``) shuts it down."""

    def __init__(self, server: Server, sock: socket.socket):
        import uvicorn

        self.server = server
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}" if ":" not in self.host else f"http://[{self.host}]:{self.port}"
        self._uvicorn = uvicorn.Server(_uvicorn_config(server.app(), server.config))
        self._sock = sock
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]},
                                        name=f"edgekit-serve-{self.port}", daemon=True)

    def start(self, timeout_s: float = 30.0) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(model, config: ServeConfig | None = None, cache=None) -> RunningServer:
    """Serve ``model`` (a ``SegmentModel`` or a path) in a background thread; returns once it accepts requests.

    ``config.port`` 0 (the default here) picks a free port: read it from ``.url``."""
    config = (config or ServeConfig(port=0)).check()
    server = Server(model, config, cache)
    return RunningServer(server, bind_socket(config.host, config.port)).start()


def serve(model, config: ServeConfig | None = None) -> None:
    """Serve ``model`` until interrupted: one process, ``config.workers`` uvicorn workers, or Ray Serve replicas."""
    import uvicorn

    config = (config or ServeConfig()).check()
    configure_logging(config.log_level)
    if config.ray:
        from edgekit.serve.ray_app import serve_ray

        return serve_ray(_model_path(model, "--ray"), config)
    if config.workers > 1:
        path = _model_path(model, "--workers")
        Server(path, config)  # refuse a bad model here with a sentence, not in every worker with a traceback
        bind_socket(config.host, config.port).close()  # refuse a taken port with a sentence, before forking
        os.environ[CONFIG_ENV] = json.dumps({"model": str(path), "config": json.loads(config.to_json())})
        uvicorn.run("edgekit.serve.app:app_from_env", factory=True, host=config.host, port=config.port,
                    workers=config.workers, log_level=config.log_level, access_log=False)
        return None
    server = Server(model, config)  # load the model first: a bad path is refused before the port is taken
    sock = bind_socket(config.host, config.port)
    log.info("serving %s on http://%s:%d (cache: %s)", model if isinstance(model, (str, Path)) else "a model",
             config.host, sock.getsockname()[1], server.cache.describe()["backend"])
    uvicorn.Server(_uvicorn_config(server.app(), config)).run(sockets=[sock])
    return None


def _model_path(model, option: str) -> Path:
    if not isinstance(model, (str, os.PathLike)):
        raise UserError(f"{option} starts new processes, which load the model themselves: pass its path, not a "
                        "loaded model.")
    path = Path(model)
    if not path.exists():
        raise UserError(f"model '{path}' does not exist; pass a late-interaction checkpoint or bundle directory.")
    return path.resolve()

