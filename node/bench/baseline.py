"""The baseline phase of ``cxr-node bench``: the node against what a user would otherwise run.

Two scoring services under the Azure ML inference server (``azmlinfsrv``), one after the
other, on the bench's images, each with 1 client and with ``--clients`` clients (the same
counts and bodies as the node's HTTP phase):

* ``baseline``: the naive entry script :mod:`node.bench.naive_score` with ``WORKER_COUNT=1``
  and none of the service's settings. It keeps the bench's thread environment
  (:data:`THREAD_ENV`; ``cxr-node`` sets ``OMP_WAIT_POLICY=PASSIVE`` for itself): with
  OpenMP's threads spinning, PyTorch on a busy machine is many times slower (docs/tuning.md),
  and the yardstick would then measure one environment variable, not the code;
* ``deploy``: the project's ``deploy/score.py`` as it is at the time of the run, with the
  settings its ``deploy/Dockerfile`` gives the container (``WORKER_COUNT``,
  ``GUNICORN_CMD_ARGS``, thread and ``CXR_NODE_*`` variables: :data:`SETTING`), read from the
  Dockerfile when the bench runs from a checkout; :data:`DOCKERFILE_ENV` mirrors it otherwise.

Both load the same weights file as the node. Each server runs in its own process group,
watched by a child that ends the group should the bench die; it is stopped before the next
starts, so that neither shares the machine with the other or with the node.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.bench.common import Options, Results, phase, progress
from node.bench.e2e import http_load
from node.bench.harness import free_port, http_json, wait_until
from node.bench.images import BenchImage
from node.bench.rabbit import WATCHDOG

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
NAIVE_SCRIPT = Path(__file__).with_name("naive_score.py")
DEPLOY_SCRIPT = REPO / "deploy" / "score.py"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
#: The Dockerfile's settings as of this writing, for when the file is not there to read.
DOCKERFILE_ENV: dict[str, str] = {
    "WORKER_COUNT": "2", "GUNICORN_CMD_ARGS": "--threads 2 --worker-connections 2 --keep-alive 0",
    "OMP_WAIT_POLICY": "PASSIVE", "CXR_NODE_HTTP_MAX_BODY_MB": "64"}
#: The Dockerfile's environment variables that are settings of the service (the others are
#: the container's paths and pip's options).
SETTING = re.compile(r"^(WORKER_COUNT|WORKER_TIMEOUT|GUNICORN_CMD_ARGS|SCORING_TIMEOUT_MS"
                     r"|OMP_\w+|OPENBLAS_\w+|MKL_\w+|CXR_NODE_\w+)$")
#: Thread settings both services keep from the bench's environment (the Dockerfile's, where
#: it sets them, override them for deploy/score.py).
THREAD_ENV = re.compile(r"^(OMP_\w+|OPENBLAS_\w+|MKL_\w+)$")
#: The server's own variables, never taken from the bench's environment.
SERVER_ENV = re.compile(r"^(AZUREML_\w+|AML_\w+)$")


def azmlinfsrv() -> str | None:
    """The Azure ML inference server's command next to this interpreter, else on PATH."""
    path = Path(sys.executable).with_name("azmlinfsrv")
    return str(path) if path.is_file() else shutil.which("azmlinfsrv")


def dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str] | None:
    """The service settings (:data:`SETTING`) of the Dockerfile's ``ENV`` instructions, or None
    when there is no Dockerfile to read. Values that use build arguments are left out."""
    try:
        text = path.read_text()
    except OSError:
        return None
    out: dict[str, str] = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        words = line.strip().split(None, 1)
        if len(words) < 2 or words[0].upper() != "ENV":
            continue
        try:
            tokens = shlex.split(words[1], comments=True)
        except ValueError:
            continue
        pairs = ([tuple(t.split("=", 1)) for t in tokens] if "=" in tokens[0]
                 else [(tokens[0], " ".join(tokens[1:]))])
        out.update({k: v for k, v in pairs if SETTING.match(k) and "$" not in v})
    return out


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The bench's environment without the service's settings and the server's own variables
    (its thread settings kept: :data:`THREAD_ENV`)."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items()
            if THREAD_ENV.match(k) or not (SETTING.match(k) or SERVER_ENV.match(k))}


@dataclass
class AzureServer:
    """One ``azmlinfsrv --entry_script`` process group on a free port of this machine."""

    name: str
    script: Path
    env: dict[str, str]
    work: Path
    port: int = 0
    ready_s: float | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _watchdog: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.work / "server.log"

    def start(self, exe: str, timeout: float) -> AzureServer:
        """Start the server and wait (at most ``timeout`` s) until its liveness route answers
        (``GET /``: the worker has run the script's ``init()``)."""
        self.port = free_port()
        started = time.perf_counter()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [exe, "--entry_script", str(self.script), "--port", str(self.port)],
                cwd=self.work, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        with open(self.work / "watchdog.log", "ab") as log:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", WATCHDOG], stdin=subprocess.PIPE, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, text=True)
        with contextlib.suppress(BrokenPipeError, OSError):
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.write(f"+{self.proc.pid}\n")
            self._watchdog.stdin.flush()
        try:
            wait_until(self._live, timeout, 0.3, f"{self.name} (azmlinfsrv) to answer",
                       self.proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}\n{self.log_tail()}") from e
        self.ready_s = time.perf_counter() - started
        return self

    def _live(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False  # not listening yet, or accepted while the worker still loads
        finally:
            conn.close()

    def post(self, body: bytes, timeout: float) -> tuple[int, Any]:
        """One ``POST /score``: status and JSON answer."""
        return http_json(self.port, "POST", "/score", body,
                         {"Content-Type": "application/dicom"}, timeout)

    def stop(self, timeout: float = 20) -> None:
        """SIGINT to the group (gunicorn's quick shutdown), then SIGKILL past ``timeout``."""
        proc = self.proc
        if proc is not None:
            for sig in (signal.SIGINT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    logger.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            # the workers leave with the master; whatever is left of the group goes too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._watchdog is not None:
            with contextlib.suppress(OSError):
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.close()  # nothing left to watch: it exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(10)
            self._watchdog = None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def servers(opts: Options, work: Path) -> tuple[list[AzureServer], dict[str, Any]]:
    """The two servers to run (not started) and what they were given."""
    weights = Path(opts.model).expanduser()
    if not weights.is_file():
        raise ValueError(f"--model {opts.model} is not a weights file (the naive script loads "
                         "one with torch.load)")
    weights = weights.resolve()
    base = clean_env()
    model_dir = work / "azureml-model"  # as the naive script expects: model.pt in the folder
    model_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        (model_dir / "model.pt").symlink_to(weights)
    naive = {**base, "WORKER_COUNT": "1", "AZUREML_MODEL_DIR": str(model_dir)}
    from_file = dockerfile_env()
    settings = DOCKERFILE_ENV if from_file is None else from_file
    deploy = {**base, **settings, "AZUREML_MODEL_DIR": str(model_dir),
              "CXR_NODE_MODEL_FILE": str(weights), "CXR_NODE_ONNX_CACHE": str(work / "onnx")}
    if opts.card is not None:
        deploy["CXR_NODE_MODEL_CARD"] = str(Path(opts.card).resolve())
    if opts.threads is not None:
        deploy["CXR_NODE_THREADS"] = str(opts.threads)
    out = []
    for name, script, env in (("baseline", NAIVE_SCRIPT, naive), ("deploy", DEPLOY_SCRIPT, deploy)):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        out.append(AzureServer(name, script, env, folder))
    info = {"baseline_settings": {"WORKER_COUNT": "1"},
            "deploy_settings": settings,
            "deploy_settings_from": str(DOCKERFILE) if from_file is not None
            else "node.bench.baseline.DOCKERFILE_ENV (no deploy/Dockerfile beside the package)",
            "thread_env": {k: v for k, v in sorted(base.items()) if THREAD_ENV.match(k)}}
    return out, info


def _load(server: AzureServer, opts: Options, bodies: list[bytes], res: Results) -> None:
    """Warm up, then ``opts.count`` requests from 1 client and from ``opts.clients``."""
    for clients in (1, opts.clients):
        warm = http_load(server.port, bodies, max(2, clients), clients, timeout=opts.timeout_s)
        if warm.errors:
            raise RuntimeError(f"{server.name}: /score failed during warm-up: {warm.errors[0]}")
    for key, clients in (("single", 1), ("concurrent", opts.clients)):
        progress(f"{server.name} under azmlinfsrv: {opts.count} requests from "
                 f"{clients} client(s)")
        run = http_load(server.port, bodies, opts.count, clients, timeout=opts.timeout_s)
        res.put(f"{server.name}_{key}_ips", run.ips)
        res.put(f"{server.name}_{key}_p50_s", run.p(50))
        res.put(f"{server.name}_{key}_p95_s", run.p(95))
        if run.errors:
            res.errors.append(f"{server.name} /score with {clients} client(s): "
                              f"{len(run.errors)} of {opts.count} failed, first: "
                              f"{run.errors[0]}")


def measure_baseline(opts: Options, images: list[BenchImage], res: Results,
                     work: Path) -> None:
    """The naive script, then deploy/score.py, under azmlinfsrv; skipped with a note (not an
    error) where azmlinfsrv is not installed or ``--model`` is not a file."""
    exe = azmlinfsrv()
    if exe is None:
        res.info["baseline"] = {"skipped": "azmlinfsrv (azureml-inference-server-http) is not "
                                           "installed"}
        return
    try:
        todo, info = servers(opts, work / "azure")
    except ValueError as e:
        res.info["baseline"] = {"skipped": str(e)}
        return
    res.info["baseline"] = info
    bodies = [image.data for image in images]

    def measure(server: AzureServer) -> None:
        progress(f"starting {server.name} ({server.script.name}) under azmlinfsrv")
        try:
            server.start(exe, opts.timeout_s)
            res.put(f"{server.name}_ready_s", server.ready_s)
            status, answer = server.post(bodies[0], opts.timeout_s)
            if status != 200:
                raise RuntimeError(f"/score answered {status}: {str(answer)[:300]}")
            if server.name == "baseline":
                info["baseline_outputs"] = len(answer.get("probabilities", {}))
            _load(server, opts, bodies, res)
        finally:
            server.stop()

    for server in todo:
        phase(res, f"{server.name} under azmlinfsrv", lambda server=server: measure(server))
