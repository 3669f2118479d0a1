"""OHIF Viewer for the system tests: its prebuilt ``dist/`` (npm's ``@ohif/app``) served on the
same origin as a proxy to Orthanc's DICOMweb root, with the cross-origin isolation headers its
workers need.

``scripts/setup.sh`` fetches the pinned release into ``.cache/ohif/<version>/dist``;
:func:`ohif_dist` does the same when it is missing (npm's own client, ``npm pack``: the package
is only its ``dist/``, nothing there needs installing) and raises
:class:`OhifUnavailableError`, saying why, when npm cannot get it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import mimetypes
import shutil
import subprocess
import tarfile
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

#: The OHIF release the tests drive (``npm view @ohif/app versions``).
OHIF_VERSION = "3.13.2"
OHIF_PACKAGE = f"@ohif/app@{OHIF_VERSION}"
ROOT = Path(__file__).resolve().parents[2]
OHIF_HOME = ROOT / ".cache" / "ohif" / OHIF_VERSION
#: Where Orthanc's DICOMweb plugin answers (``Orthanc`` in ``peers.py``), and the proxy too.
DICOMWEB_ROOT = "/dicom-web"
#: Same-origin isolation (``crossOriginIsolated``: SharedArrayBuffer for the decode workers).
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                 ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml",
                 ".woff2": "font/woff2", ".html": "text/html; charset=utf-8"}


class OhifUnavailableError(RuntimeError):
    """OHIF cannot be had here (no npm, or npm could not fetch it): the reason, for a skip."""


def ohif_dist(home: Path = OHIF_HOME) -> Path:
    """The ``dist/`` folder of the pinned ``@ohif/app``, fetched with npm when missing."""
    dist = home / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise OhifUnavailableError(f"npm is not installed: cannot fetch {OHIF_PACKAGE} "
                                   "(scripts/setup.sh fetches it where npm is present)")
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
        try:
            proc = subprocess.run([npm, "pack", OHIF_PACKAGE, "--pack-destination", tmp,
                                   "--silent"], capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise OhifUnavailableError(f"npm pack {OHIF_PACKAGE} took over 600 s") from None
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            why = (proc.stderr or proc.stdout).strip()[-500:]
            raise OhifUnavailableError(
                f"npm could not fetch {OHIF_PACKAGE} (exit {proc.returncode}): {why}")
        with tarfile.open(tarballs[0]) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)  # npm's tarball of a pinned release
        unpacked = Path(tmp) / "package" / "dist"
        if not (unpacked / "index.html").is_file():
            raise OhifUnavailableError(f"{OHIF_PACKAGE} from npm has no dist/index.html")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(dist)
        unpacked.rename(dist)
    return dist


def app_config(origin: str) -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source, Orthanc's root behind ``origin``."""
    root = origin + DICOMWEB_ROOT
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (cxr-node system test)", "name": "orthanc",
            "wadoUriRoot": root, "qidoRoot": root, "wadoRoot": root,
            "qidoSupportsIncludeField": False, "supportsReject": False,
            "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
            "supportsWildcard": True, "dicomUploadEnabled": False,
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/", "extensions": [], "modes": [], "customizationService": {},
        "showStudyList": True, "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": False,
        "showLoadingIndicator": False, "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": "orthanc", "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # quiet; failures show in the test
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        for key, value in {**ISOLATION_HEADERS, "Content-Type": content_type,
                           "Content-Length": str(len(body)), "Cache-Control": "no-store"}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k in ("Accept", "Content-Type", "Range")
                   if (v := self.headers.get(k)) is not None}
        host, port = self.server.upstream
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            self._send(502, f"Orthanc did not answer: {e}".encode(), "text/plain")
            return
        finally:
            conn.close()
        self._send(resp.status, data, resp.getheader("Content-Type") or "application/octet-stream")

    def _static(self) -> None:
        path = urlsplit(self.path).path
        if path == "/app-config.js":
            self._send(200, self.server.config.encode(), CONTENT_TYPES[".js"])
            return
        dist = self.server.dist
        file = (dist / path.lstrip("/")).resolve()
        if not file.is_relative_to(dist) or not file.is_file():
            file = dist / "index.html"  # the single-page app's routes (/viewer, /basic...)
        kind = CONTENT_TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0]
        self._send(200, file.read_bytes(), kind or "application/octet-stream")

    def do_GET(self) -> None:
        if self.path.startswith(DICOMWEB_ROOT + "/"):
            self._proxy()
        else:
            self._static()

    do_HEAD = do_GET  # noqa: N815 (http.server's naming)

    def do_POST(self) -> None:
        if self.path.startswith(DICOMWEB_ROOT + "/"):
            self._proxy()
        else:
            self._send(405, b"read-only", "text/plain")


class ViewerServer(ThreadingHTTPServer):
    """OHIF's ``dist`` and a proxy of ``/dicom-web/*`` to Orthanc, on one origin of
    127.0.0.1, in a daemon thread: ``with ViewerServer(dist, orthanc_port) as v: v.url``."""

    daemon_threads = True

    def __init__(self, dist: Path, orthanc_port: int, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.dist = dist.resolve()
        self.upstream = (host, orthanc_port)
        self.url = f"http://{host}:{self.server_address[1]}"
        self.config = app_config(self.url)
        self._thread = threading.Thread(target=self.serve_forever, name="ohif-server",
                                        daemon=True)

    def start(self) -> ViewerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
