"""The node's settings: one pydantic ``BaseSettings``.

Precedence, highest first: command-line flags > environment (``CXR_NODE_<NAME>``, lists and
tables as JSON) > TOML config file (``--config FILE``) > defaults.

The config file is a pydantic-settings ``toml_file``: :meth:`Settings.load` makes a subclass whose
``model_config`` names it, so each call reads its own file and no state is shared between calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from domain import EXPLAIN_CHOICES, check_explain
from node.outbound import DestinationTLS, DicomwebAuth

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: 16 chars, no backslash


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity: AE title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """Parse ``AE@HOST:PORT``."""
        m = re.match(r"^(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$", text.strip())
        if not m:
            raise ValueError(f"destination {text!r} is not AE@HOST:PORT")
        ae, port = m.group("ae").strip(), int(m.group("port"))
        check_ae_title(ae)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} in {text!r} is out of range")
        return cls(ae, m.group("host").strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_ae_title(ae: str) -> str:
    if not _AE_RE.match(ae) or not ae.strip():
        raise ValueError(f"AE title {ae!r} must be 1-16 printable characters without backslash")
    return ae


class Settings(BaseSettings):
    """Everything ``cxr-node serve`` can be told. See README "Configuration"."""

    # toml_file stays None here: only the subclass Settings.load makes for a file names one;
    # an error never quotes the input (it holds http_token, maybe a URL with a password)
    model_config = SettingsConfigDict(env_prefix="CXR_NODE_", extra="forbid",
                                      hide_input_in_errors=True)

    # identity and network
    ae_title: str = Field("CXRNODE", description="the node's AE title")
    bind: str = Field("0.0.0.0", description="address the DICOM and HTTP ports listen on")
    dicom_port: int = Field(11112, ge=0, le=65535)
    http_port: int | None = Field(8000, ge=0, le=65535, description="HTTP port; none: no HTTP")
    # model
    model: str = Field("densenet121-res224-pc", description="weights file or named weights")
    card: Path | None = None
    weights_cache: Path | None = None
    explain: str = Field("gradcam", description=f"one of {', '.join(EXPLAIN_CHOICES)}")
    explained_findings: int = Field(3, ge=0, le=64, description="positive findings explained "
                                    "and outlined in the SR and capture, most probable first")
    parametric_map: bool = Field(False, description="also send the heat map as a float "
                                 "parametric map (no viewer tried shows one for radiographs)")
    capture_syntax: str = Field("1.2.840.10008.1.2.4.50", description="transfer syntax of "
                                "the heat-map capture: JPEG baseline, JPEG 2000 lossless or "
                                "explicit VR little endian")
    onnx_fast_path: bool = Field(True, description="predict with ONNX Runtime when the "
                                 "export matches PyTorch within 1e-4")
    onnx_run_batch: int = Field(1, ge=1, le=256, description="images per ONNX Runtime run "
                                "(a batch runs in runs of this size): on CPU a larger run is "
                                "no faster per image, and the session keeps the memory of its "
                                "largest run")
    # storage and queue
    spool: Path = Field(Path("spool"), description="spool folder (received images, queue, outbox)")
    spool_quota_mb: float | None = Field(None, gt=0, description="largest spool size")
    min_free_mb: float = Field(256, ge=0, description="refuse images when less disk is free")
    purge_delivered: bool = Field(True, description="delete files once all results are sent")
    # processing
    workers: int = Field(2, ge=1, le=32, description="worker threads; 2 overlap DICOM "
                         "building with inference")
    batch_size: int = Field(8, ge=1, le=256)
    max_queue_delay_ms: float = Field(0, ge=0, le=10_000, description="wait this long for "
                                      "more jobs when fewer than a batch are queued (Triton's "
                                      "max_queue_delay; 0: take what is queued)")
    threads: int | None = Field(None, ge=1)
    handoff_mb: float = Field(128, ge=0, description="received objects kept in memory for "
                              "the workers (besides the spool), so they are not read back")
    malloc_arenas: int | None = Field(2, ge=1, le=64, description="glibc malloc arenas of "
                                      "cxr-node serve (fewer: less memory kept; none: glibc's "
                                      "default, 8 per core)")
    # sending results
    destinations: list[str] = Field(default_factory=list, description="AE@HOST:PORT")
    peers: dict[str, str] = Field(default_factory=dict,
                                  description="calling AE title -> HOST:PORT to send results back")
    dicomweb_destinations: list[str] = Field(
        default_factory=list, description="DICOMweb STOW-RS base URLs to store results to")
    destination_tls: dict[str, DestinationTLS] = Field(
        default_factory=dict, description="AE title of a destination (or of a peer) -> TLS "
        "to it: ca, cert, key, server_name (README \"Security\")")
    dicomweb_auth: dict[str, DicomwebAuth] = Field(
        default_factory=dict, description="DICOMweb destination URL -> its credentials: one "
        "of bearer_env, bearer_file, basic_env, basic_file (never the secret itself)")
    retry_max_attempts: int = Field(8, ge=1)
    retry_initial_s: float = Field(2.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)
    # scale-out (docs/scale-out.md): roles over a broker, a shared store, shared job records
    role: Literal["all", "receive", "work", "send"] = Field(
        "all", description="what this process does: receive (C-STORE, STOW-RS, /score), work "
        "(model and explanations), send (deliveries), or all; other than all needs a broker")
    broker: str | None = Field(None, description="amqp:// or amqps:// URL of the RabbitMQ "
                               "broker, or of each node of its cluster, comma-separated "
                               "(credentials only from the environment or "
                               "broker_credentials_file); none: the embedded queue")
    broker_credentials_file: Path | None = Field(None, description="file with one line "
                                                 "user:password for the broker")
    broker_ca: Path | None = Field(None, description="PEM CA bundle that signed the broker's "
                                   "TLS certificate (default: the system's)")
    broker_client_cert: Path | None = Field(None, description="PEM client certificate for "
                                            "a broker that verifies its clients")
    broker_client_key: Path | None = Field(None, description="PEM key of broker_client_cert")
    broker_timeout_s: float = Field(10, gt=0, description="wait this long for the broker to "
                                    "confirm a message before refusing the work")
    records: str | None = Field(None, description="postgresql:// URL of the job records "
                                "shared by all roles (password from PGPASSWORD or ~/.pgpass); "
                                "needed with a broker")
    store: Path | None = Field(None, description="the shared object store, a folder every "
                               "role mounts (NFS); default: the spool")
    reconcile_grace_s: float = Field(60, ge=0, description="a receiver's reconciler at start "
                                     "leaves alone what is younger (others are storing it)")
    # HTTP
    http_token: str | None = Field(None, description="bearer token every HTTP route but "
                                   "/healthz requires; none: no authentication")
    http_max_body_mb: float = Field(64, gt=0, description="largest HTTP request body")
    http_body_timeout_s: float = Field(120, gt=0, description="a request body must have "
                                       "arrived this long after its headers (else 408, closed)")
    max_queue_depth: int = Field(512, ge=1, description="jobs waiting before HTTP answers 503")
    score_timeout_s: float = Field(120, gt=0)
    # the operators' web page at /ui (docs/ui.md)
    ui_operators_file: Path | None = Field(None, description="file of operators, one "
                                           "NAME:SECRET a line, who sign in to /ui; none: "
                                           "http_token and a name")
    ui_session_hours: float = Field(8, gt=0, le=24 * 30, description="a /ui sign-in lasts "
                                    "this long")
    ui_show_patient: bool = Field(False, description="/ui shows patient name, ID, birth "
                                  "date and accession number (kept for the page only then)")
    ui_thumbnails: Literal["no-burned-in", "all", "none"] = Field(
        "no-burned-in", description="which sources /ui shows as thumbnails: those whose "
        "Burned In Annotation is NO, all, or none")
    ui_retention_days: float = Field(30, ge=0, description="/ui keeps a job's thumbnail and "
                                     "findings this long (after its files are deleted)")
    # access control (see README "Security")
    allowed_calling_aes: list[str] = Field(
        default_factory=list, description="calling AE titles allowed to associate; empty: any")
    tls_cert: Path | None = Field(None, description="PEM certificate: DIMSE and HTTP over TLS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_ca: Path | None = Field(None, description="PEM CA bundle to check client certificates")
    tls_require_client_cert: bool = Field(False, description="refuse clients without a "
                                          "certificate signed by tls_ca")
    # limits
    max_associations: int = Field(32, ge=1, description="concurrent DICOM associations")
    max_pdu: int = Field(65536, ge=0)
    network_timeout_s: float = Field(60, gt=0)
    # audit trail, IHE ATNA (docs/audit.md)
    audit: bool = Field(True, description="write DICOM audit messages (PS3.15 A.5)")
    audit_log: Path | None = Field(None, description="audit log file, one XML message a "
                                   "line; default: audit.log in the spool")
    audit_syslog: str | None = Field(None, description="HOST:PORT of a syslog collector that "
                                     "also gets them (RFC 5424 over TLS, RFC 5425)")
    audit_syslog_ca: Path | None = Field(None, description="PEM CA bundle that signed the "
                                         "collector's certificate (default: the system's)")
    audit_syslog_cert: Path | None = Field(None, description="PEM client certificate for "
                                           "a collector that verifies its clients")
    audit_syslog_key: Path | None = Field(None, description="PEM key of audit_syslog_cert")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v)

    @field_validator("capture_syntax")
    @classmethod
    def _capture_syntax(cls, v: str) -> str:
        from dicom_io.results.sc import check_transfer_syntax

        return check_transfer_syntax(v)

    @field_validator("explain")
    @classmethod
    def _explain(cls, v: str) -> str:
        return check_explain(v)

    @field_validator("destinations")
    @classmethod
    def _destinations(cls, v: list[str]) -> list[str]:
        for item in v:
            Peer.parse(item)
        return v

    @field_validator("dicomweb_destinations")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"DICOMweb destination {url!r} is not an http(s) URL")
            if "@" in url.split("/")[2]:  # not quoted: it holds a secret
                raise ValueError("a DICOMweb destination URL holds credentials; give them "
                                 "in dicomweb_auth (from a file or the environment)")
        return v

    @field_validator("peers")
    @classmethod
    def _peers(cls, v: dict[str, str]) -> dict[str, str]:
        for ae, address in v.items():
            Peer.parse(f"{ae}@{address}")
        return v

    @field_validator("allowed_calling_aes")
    @classmethod
    def _allowed(cls, v: list[str]) -> list[str]:
        return [check_ae_title(ae.strip()) for ae in v]

    @model_validator(mode="after")
    def _scale_out(self) -> Settings:
        if self.role != "all" and self.broker is None:
            raise ValueError(f"role {self.role!r} needs a broker (--broker amqp://...)")
        if self.broker is not None:
            if not all(re.match(r"^\s*amqps?://[^/\s]+", u) for u in self.broker.split(",")):
                raise ValueError("broker is not a comma-separated list of amqp:// or amqps:// "
                                 "URLs")
            if self.records is None:
                raise ValueError("a broker needs shared job records (--records "
                                 "postgresql://...)")
        if (self.broker_client_cert is None) != (self.broker_client_key is None):
            raise ValueError("broker_client_cert and broker_client_key go together")
        if self.records is not None and not re.match(r"^postgres(ql)?://", self.records):
            raise ValueError("records is not a postgresql:// URL")
        return self

    @model_validator(mode="after")
    def _audit(self) -> Settings:
        if self.audit_syslog is not None and not re.match(r"^(\[[^\]]+\]|[^:\s]+):\d{1,5}$",
                                                          self.audit_syslog.strip()):
            raise ValueError(f"audit_syslog {self.audit_syslog!r} is not HOST:PORT")
        if (self.audit_syslog_cert is None) != (self.audit_syslog_key is None):
            raise ValueError("audit_syslog_cert and audit_syslog_key go together")
        return self

    @model_validator(mode="after")
    def _tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        for name in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path} is not a file")
        if self.tls_require_client_cert and (self.tls_ca is None or self.tls_cert is None):
            raise ValueError("tls_require_client_cert needs tls_cert, tls_key and tls_ca")
        return self

    @model_validator(mode="after")
    def _outbound(self) -> Settings:
        aes = {Peer.parse(d).ae_title for d in self.destinations} | set(self.peers)
        for ae in self.destination_tls:
            if ae not in aes:
                raise ValueError(f"destination_tls {ae!r} is the AE title of no destination "
                                 "or peer")
        for url in self.dicomweb_auth:
            if url not in self.dicomweb_destinations:
                raise ValueError(f"dicomweb_auth {url!r} is not one of dicomweb_destinations")
        return self

    def server_ssl_context(self):
        """The TLS context of the DIMSE server, or ``None`` without a certificate."""
        import ssl

        if self.tls_cert is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_ca is not None:
            ctx.load_verify_locations(self.tls_ca)
            ctx.verify_mode = (ssl.CERT_REQUIRED if self.tls_require_client_cert
                               else ssl.CERT_OPTIONAL)
        return ctx

    @property
    def destination_peers(self) -> list[Peer]:
        return [Peer.parse(d) for d in self.destinations]

    def peer_for(self, calling_ae: str) -> Peer | None:
        """Where to send results back to a sender, if its AE title is listed under peers."""
        address = self.peers.get(calling_ae.strip())
        return Peer.parse(f"{calling_ae.strip()}@{address}") if address else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # flags (init) > environment > the TOML file that settings_cls.model_config names
        # (none in Settings itself: the source then reads nothing)
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    @classmethod
    def with_config_file(cls, config_file: Path) -> type[Settings]:
        """A subclass of this class that reads ``config_file`` (its ``toml_file``).

        A new class for each call: two loads of different files, in any threads, never see
        each other's file."""
        path = Path(config_file)

        class FromFile(cls):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(toml_file=path)

        FromFile.__name__ = FromFile.__qualname__ = cls.__name__
        FromFile.__doc__ = cls.__doc__
        return FromFile

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> Settings:
        """Settings from ``flags`` (only those given) > environment > ``config_file``."""
        if config_file is not None and not Path(config_file).is_file():
            raise ValueError(f"config file {config_file} does not exist")
        given = {k: v for k, v in flags.items() if v is not None and v != []}
        source = cls.with_config_file(Path(config_file)) if config_file else cls
        return source(**given)
