"""Real DICOM peers for system tests: dcmtk's storescp, the node as a process, Orthanc."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom

from node.bench import harness
from node.bench.harness import free_port, stop_process, wait_port, wait_until

__all__ = ["Certificates", "NodeProcess", "Orthanc", "Receiver", "dciodvfy_errors", "free_port",
           "running", "stop_process", "storescu", "wait_port", "wait_until"]


@dataclass
class Receiver:
    """dcmtk ``storescp`` acting as the PACS: every object it gets lands in ``folder``."""

    ae_title: str
    port: int
    folder: Path
    proc: subprocess.Popen | None = None
    #: storescp's transfer syntax option: ``+xa`` any, ``+xi`` implicit VR little endian only
    syntaxes: str = "+xa"
    #: storescp's TLS options, e.g. ``("+tls", key, cert, "+cf", ca)``; none: plain TCP
    tls: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", self.syntaxes, *self.tls, "+uf", "-fe", ".dcm", "-aet", self.ae_title,
             "-od", str(self.folder), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 30, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    def received(self) -> list[pydicom.Dataset]:
        out = []
        for f in self.files():
            with contextlib.suppress(Exception):
                out.append(pydicom.dcmread(f, stop_before_pixels=True))
        return out

    def wait_for(self, count: int, timeout: float = 120) -> list[pydicom.Dataset]:
        """Wait until ``count`` distinct SOP instances have arrived."""

        def arrived() -> list[pydicom.Dataset] | None:
            got = self.received()
            return got if len({str(ds.SOPInstanceUID) for ds in got}) >= count else None

        try:
            return wait_until(arrived, timeout, 0.25, f"{count} object(s) to arrive")
        except TimeoutError:
            raise TimeoutError(f"{len(self.received())} object(s) of {count} arrived in "
                               f"{timeout} s") from None


@dataclass
class NodeProcess(harness.NodeProcess):
    """``cxr-node serve`` as a real process on free ports (the bench's harness), logging with
    ``-v``, retrying deliveries soon; ``start`` also waits for a background ONNX export to end,
    so every test sees one backend."""

    serve_args = ("--retry-initial-s", "0.5")
    verbose: bool = True

    def start(self, timeout: float = 120) -> NodeProcess:
        super().start(timeout)
        self.wait_fast_path(timeout)
        return self


def storescu(port: int, files: list[Path], called: str = "CXRNODE", calling: str = "MODALITY",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["storescu", "-aec", called, "-aet", calling, *extra, "127.0.0.1", str(port),
         *map(str, files)], capture_output=True, text=True, timeout=600)


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                          errors="replace", timeout=120)  # it quotes values in their own bytes
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@dataclass
class Orthanc:
    """Orthanc with its DICOMweb plugin, on free ports, with a throw-away storage folder."""

    folder: Path
    http_port: int = 0
    dicom_port: int = 0
    ae_title: str = "ORTHANC"
    proc: subprocess.Popen | None = None
    #: user -> password: HTTP authentication on (basic), and these helpers authenticate
    users: dict[str, str] | None = None

    def start(self, modalities: dict[str, list] | None = None) -> Orthanc:
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        plugin = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
        config = {
            "Name": "cxr-node-test", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users or {},
            "DicomModalities": modalities or {}, "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False, "Plugins": [plugin] if Path(plugin).exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpServerEnabled": True, "StableAge": 1, "ConcurrentJobs": 2,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(["Orthanc", str(path)], stdout=subprocess.DEVNULL,
                                     stderr=(self.folder / "orthanc.log").open("ab"))
        wait_port(self.http_port, 60, self.proc)
        wait_port(self.dicom_port, 60, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def headers(self) -> dict[str, str]:
        """Basic authentication as the first of ``users``, if any."""
        if not self.users:
            return {}
        user, password = next(iter(self.users.items()))
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode())
                .decode()}

    def get(self, path: str):
        req = urllib.request.Request(self.url + path, headers=self.headers())
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: bytes | dict, content_type: str = "application/json"):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": content_type, **self.headers()})
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read()
        return json.loads(text) if text else None

    def put(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     method="PUT", headers={"Content-Type": "application/json",
                                                            **self.headers()})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()


@contextlib.contextmanager
def running(*peers) -> Iterator[None]:
    try:
        yield
    finally:
        for p in peers:
            p.stop()


@dataclass
class Certificates:
    """A throw-away CA with a server certificate (127.0.0.1) and a client certificate."""

    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    def make(self) -> Certificates:
        self.folder.mkdir(parents=True, exist_ok=True)

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.folder)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=cxr-node test CA", "-keyout", "ca.key", "-out", "ca.crt")
        for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                                ("client", "extendedKeyUsage=clientAuth")):
            run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                f"{name}.key", "-out", f"{name}.csr")
            (self.folder / f"{name}.ext").write_text(extension + "\n")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out",
                f"{name}.crt")
        return self
