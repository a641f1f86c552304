"""``edgekit demo web BUNDLE``: the browser demo (``web_demo/``) and an ONNX bundle on a local HTTP server.

The page runs the bundle with onnxruntime-web (WebAssembly) in the browser; this server only hands
out files, and only three kinds of them:

- ``/`` and the page's own files (``PAGE_FILES`` in ``web_demo/``);
- ``/ort/NAME``: the files of onnxruntime-web's ``dist/`` (installed by ``npm ci --prefix web_demo``),
  so nothing is fetched from a CDN;
- ``/bundle/manifest.json`` and ``/bundle/NAME`` for each file the manifest lists; or, for a
  packed bundle (``BUNDLE.edgepack``, zlib), only ``/bundle.edgepack``, which the page downloads
  and decodes itself (the URL carries ``?pack=bundle.edgepack``).

Everything else is 404. The bundle is validated with ``edgekit_device`` (structure, sizes and
sha256 of every file) before the server starts. Torch is not imported.
"""

from __future__ import annotations

import errno
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edgekit.errors import UserError

WEB_ROOT = Path(__file__).resolve().parents[1] / "web_demo"
PAGE_FILES = ("index.html", "app.js", "runtime.js", "tokenizer.js", "style.css")
ORT_DIST = Path("node_modules") / "onnxruntime-web" / "dist"
ORT_ENTRY = "ort.wasm.min.mjs"  # what app.js imports; it loads ort-wasm-simd-threaded.{mjs,wasm}
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".tflite": "application/octet-stream",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
INSTALL_HINT = "npm ci --prefix web_demo"


def mime_type(name: str) -> str:
    return MIME_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


PACK_URL_NAME = "bundle.edgepack"


def is_pack(path) -> bool:
    from edgekit_device.pack import MAGIC

    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def load_web_bundle(bundle) -> dict:
    """The manifest of ``bundle`` (a directory, or a packed bundle the page will decode) after
    ``edgekit_device`` validated it (every file's sha256 too); a ``UserError`` for a missing,
    invalid or non-ONNX bundle, or a pack the browser cannot decode."""
    import tempfile

    import edgekit_device
    from edgekit_device.pack import read_pack

    try:
        if is_pack(bundle):
            header, _ = read_pack(bundle)
            if any(s["codec"] != "zlib" for s in header["streams"]):
                raise UserError(f"'{bundle}' is compressed with xz, and the browser decodes zlib packs; pack it again "
                                f"with `edgekit bundle unpack {bundle} --out DIR` and `edgekit bundle pack DIR --codec "
                                "zlib`.")
            with tempfile.TemporaryDirectory(prefix="edgekit-demo-") as tmp:
                loaded = edgekit_device.load_bundle(edgekit_device.unpack(bundle, Path(tmp) / "bundle"))
        else:
            loaded = edgekit_device.load_bundle(bundle)
    except edgekit_device.BundleError as e:
        raise UserError(str(e)) from None
    manifest = loaded.manifest
    if manifest["format"] != "onnx":
        raise UserError(f"bundle '{bundle}' holds {manifest['format']} graphs; the browser demo runs ONNX bundles "
                        "(export with --format onnx).")
    return manifest


def check_web_root(web_root: Path) -> Path:
    """``web_root`` with the page files and onnxruntime-web's dist, or a ``UserError`` saying how to install them."""
    web_root = Path(web_root)
    missing = [name for name in PAGE_FILES if not (web_root / name).is_file()]
    if missing:
        raise UserError(f"the demo page is not in '{web_root}' ({', '.join(missing)} missing); run edgekit from a "
                        "source checkout (pip install -e ./export -e .), which has web_demo/.")
    if not (web_root / ORT_DIST / ORT_ENTRY).is_file():
        raise UserError(f"onnxruntime-web is not installed in '{web_root / 'node_modules'}'; run `{INSTALL_HINT}` "
                        f"in {web_root.parent} (Node 20 and npm) and start the demo again.")
    return web_root


class DemoHandler(BaseHTTPRequestHandler):
    server: DemoServer
    server_version = "edgekit-demo"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet: the terminal shows the URL, not every request
        if self.server.verbose:
            super().log_message(format, *args)

    def resolve(self, path: str) -> Path | None:
        """The file a URL path names, or None when it is not one of the files this server hands out."""
        path = unquote(urlsplit(path).path)
        if path in ("/", ""):
            return self.server.web_root / "index.html"
        if "\x00" in path or "\\" in path:
            return None
        parts = path.lstrip("/").split("/")
        if any(p in ("", ".", "..") for p in parts):
            return None
        if len(parts) == 1 and parts[0] in PAGE_FILES:
            return self.server.web_root / parts[0]
        if parts[0] == "ort" and len(parts) == 2:
            target = self.server.web_root / ORT_DIST / parts[1]
            return target if target.is_file() else None
        if self.server.pack is not None:
            return self.server.pack if parts == [PACK_URL_NAME] else None
        if parts[0] == "bundle" and len(parts) >= 2:
            name = "/".join(parts[1:])
            if name == "manifest.json" or name in self.server.bundle_files:
                return self.server.bundle / name
        return None

    def send_file(self, head: bool) -> None:
        target = self.resolve(self.path)
        if target is None or not target.is_file():
            body = b"not found\n"
            self.send_response(HTTPStatus.NOT_FOUND)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        size = target.stat().st_size
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", mime_type(target.name))
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if head:
            return
        with open(target, "rb") as f:
            while block := f.read(1 << 20):
                self.wfile.write(block)

    def do_GET(self):
        try:
            self.send_file(head=False)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_HEAD(self):
        try:
            self.send_file(head=True)
        except (BrokenPipeError, ConnectionResetError):
            pass


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, bundle: Path, manifest: dict, web_root: Path, verbose: bool = False):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.pack = bundle if is_pack(bundle) else None  # served whole; the page unpacks it
        self.bundle = bundle
        self.bundle_files = frozenset(manifest["files"])
        self.web_root = web_root
        self.verbose = verbose
        super().__init__(address, DemoHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        query = f"?pack={PACK_URL_NAME}" if self.pack is not None else ""
        return (f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/") + query


def make_server(bundle, port: int = 8000, host: str = "127.0.0.1", web_root=None, verbose: bool = False) -> DemoServer:
    """A bound (not yet serving) demo server for ``bundle``; ``port`` 0 picks a free port (see ``.url``)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"port must be an integer from 0 to 65535, got {port!r}.")
    bundle = Path(bundle)
    manifest = load_web_bundle(bundle)
    root = check_web_root(Path(web_root) if web_root is not None else WEB_ROOT)
    try:
        return DemoServer((host, port), bundle.resolve(), manifest, root.resolve(), verbose)
    except socket.gaierror:
        raise UserError(f"host '{host}' cannot be resolved to an address; pass --host 127.0.0.1 "
                        "(or another address of this machine).") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use; pass --port with another port "
                            "(0 picks a free one).") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise UserError(f"no permission to listen on {host}:{port}; pass a --port above 1023.") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --host or --port.") from None


def serve_web(bundle, port: int = 8000, host: str = "127.0.0.1", ready=None, web_root=None, verbose: bool = False) -> None:
    """Serve the demo page and ``bundle`` until interrupted; ``ready(url)`` is called once it listens."""
    server = make_server(bundle, port=port, host=host, web_root=web_root, verbose=verbose)
    with server:
        if ready is not None:
            ready(server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def start_in_thread(bundle, port: int = 0, host: str = "127.0.0.1", web_root=None) -> DemoServer:
    """A demo server serving from a daemon thread (tests, notebooks); stop it with ``.shutdown()``."""
    server = make_server(bundle, port=port, host=host, web_root=web_root)
    threading.Thread(target=server.serve_forever, name="edgekit-demo", daemon=True).start()
    return server


__all__ = ["DemoServer", "make_server", "serve_web", "start_in_thread", "load_web_bundle", "check_web_root",
           "mime_type", "PAGE_FILES"]
