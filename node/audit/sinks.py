"""Where audit messages go: a local file (always) and a syslog collector over TLS (optional).

The file gets one message a line, appended by a single ``write`` on a descriptor opened for
appending (several processes may share the file; a file renamed by logrotate is followed).
The syslog sink never blocks its caller: messages wait in a bounded queue for one thread that
sends them as RFC 5424 messages framed by octet counting (RFC 5425) over TLS, and reconnects
with a backoff when the collector is gone. The file stays the complete record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

#: PRI of an audit message: facility 10 (security/authorization), severity 5 (notice)
PRI = 10 * 8 + 5
#: MSGID of a DICOM / RFC 3881 audit message (IHE ITI TF-2 3.20.6)
MSGID = "IHE+RFC-3881"
BOM = "\ufeff"


class FileSink:
    """Append each message as a line to ``path`` (created with mode 0640)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # each write says so; the node's work goes on
            logger.warning("audit log folder %s not made: %s", self.path.parent, e.strerror)

    def write(self, xml: str) -> bool:
        """Append one message; False (and a warning) when the file cannot be written."""
        data = (xml + "\n").encode()
        try:
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
        except OSError as e:
            logger.warning("audit log %s not written: %s", self.path, e.strerror)
            return False
        return True

    def close(self, timeout: float = 0) -> None:
        """Nothing held open."""


def syslog_frame(xml: str, hostname: str, app_name: str, procid: str,
                 when: float | None = None) -> bytes:
    """One RFC 5424 message carrying ``xml`` (UTF-8 with its BOM), framed by octet counting
    as RFC 5425 requires: ``MSG-LEN SP SYSLOG-MSG``."""
    stamp = (datetime.now(UTC) if when is None
             else datetime.fromtimestamp(when, UTC))
    header = (f"<{PRI}>1 {stamp.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} "
              f"{hostname or '-'} {app_name} {procid} {MSGID} - ")
    body = (header + BOM + xml).encode()
    return f"{len(body)} ".encode() + body


class SyslogSink:
    """Messages to a syslog collector over TLS (RFC 5425), from a queue by one thread.

    ``send`` never blocks: when ``capacity`` messages are waiting (the collector is gone for
    long), new ones are dropped from syslog (counted, and still in the file).
    """

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *,
                 app_name: str = "cxr-node", capacity: int = 10_000,
                 timeout_s: float = 10, backoff_s: tuple[float, float] = (0.5, 30)) -> None:
        self.host, self.port = host, port
        self.context = context
        self.app_name = app_name
        self.hostname = socket.gethostname()
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.dropped = 0
        self.sent = 0
        self._queue: queue.Queue[str | None] = queue.Queue(capacity)
        self._stop = threading.Event()
        self._sock: ssl.SSLSocket | None = None
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def write(self, xml: str) -> bool:
        try:
            self._queue.put_nowait(xml)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("audit syslog %s:%d: queue full, %d message(s) not sent "
                               "(the audit log file has them)", self.host, self.port,
                               self.dropped)
            return False
        return True

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        try:
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _deliver(self, xml: str) -> None:
        """Send one message, reconnecting with a backoff until it is sent or we stop."""
        wait = self.backoff_s[0]
        while True:
            try:
                if self._sock is not None and not self._alive():
                    self._drop_connection()
                if self._sock is None:
                    self._sock = self._connect()
                    logger.info("audit syslog connected to %s:%d", self.host, self.port)
                self._sock.sendall(syslog_frame(xml, self.hostname, self.app_name,
                                                str(os.getpid())))
                self.sent += 1
                return
            except OSError as e:  # ssl.SSLError too
                self._drop_connection()
                logger.warning("audit syslog %s:%d: %s; retrying in %.1f s", self.host,
                               self.port, type(e).__name__ if not e.strerror else e.strerror,
                               wait)
                if self._stop.wait(wait):
                    return
                wait = min(2 * wait, self.backoff_s[1])

    def _alive(self) -> bool:
        """Whether the collector kept the connection: it never writes, so a readable socket
        means it closed it (a restarted collector would otherwise lose the next message)."""
        readable, _, _ = select.select([self._sock], [], [], 0)
        return not readable

    def _drop_connection(self, clean: bool = False) -> None:
        """Close the connection; ``clean``: with TLS's close_notify first (at stop)."""
        if self._sock is not None:
            with contextlib.suppress(OSError, ValueError):
                if clean:
                    self._sock.settimeout(self.timeout_s)
                    self._sock.unwrap().close()
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _run(self) -> None:
        while not self._stop.is_set():
            xml = self._queue.get()
            if xml is None:
                break
            self._deliver(xml)
        self._drop_connection(clean=True)

    def close(self, timeout: float = 5) -> None:
        """Send what is queued (for up to ``timeout`` seconds), then stop."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._thread.join(1)
