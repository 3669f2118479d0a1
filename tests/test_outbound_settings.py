"""Outbound security settings: TLS per DIMSE destination, credentials per DICOMweb destination
(names of files and variables, never the secret), read when sent; what is refused, and the
reason a delivery gets when they cannot be loaded (no peer needed: it fails before connecting).
The real peers are in tests/system/test_outbound_security.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from pydantic import ValidationError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from node.dimse.scu import Outgoing, send_files
from node.http.stow_client import stow_files
from node.outbound import DestinationTLS, DicomwebAuth, OutboundError
from node.settings import Peer, Settings

SECRET = "s3cr3t-Tok3n-9931"
URL = "https://archive.example.org/dicom-web"


def result_file(path: Path) -> Path:
    """A small readable DICOM file, as a result in the outbox."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def authorization(auth: DicomwebAuth) -> str:
    """The ``Authorization`` header a request gets."""
    return requests.Request("POST", URL, auth=auth.http_auth()).prepare().headers["Authorization"]


def test_plain_destinations_stay_plain_and_tables_come_from_file_or_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = Settings(destinations=["PACS@pacs.example.org:104"])
    assert plain.destination_peers == [Peer("PACS", "pacs.example.org", 104)]
    assert plain.destination_tls == {} and plain.dicomweb_auth == {}
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = tmp_path / "node.toml"
    config.write_text(f'destinations = ["PACS@pacs.example.org:2762"]\n'
                      f'dicomweb_destinations = ["{URL}"]\n'
                      f'[destination_tls.PACS]\nca = "{ca}"\nserver_name = "pacs.example.org"\n'
                      f'[dicomweb_auth."{URL}"]\nbearer_file = "/run/secrets/token"\n')
    settings = Settings.load(config)
    assert settings.destination_tls["PACS"] == DestinationTLS(ca=ca, server_name="pacs.example.org")
    assert settings.dicomweb_auth[URL] == DicomwebAuth(bearer_file=Path("/run/secrets/token"))
    monkeypatch.setenv("CXR_NODE_DICOMWEB_DESTINATIONS", json.dumps([URL]))
    monkeypatch.setenv("CXR_NODE_DICOMWEB_AUTH", json.dumps({URL: {"basic_env": "ARCHIVE"}}))
    assert Settings.load().dicomweb_auth[URL] == DicomwebAuth(basic_env="ARCHIVE")


@pytest.mark.parametrize(("change", "message"), [
    ({"destination_tls": {"OTHER": {}}}, "AE title of no destination"),
    ({"destination_tls": {"PACS": {"cert": "/etc/hosts"}}}, "cert and key go together"),
    ({"destination_tls": {"PACS": {"ca": "/nonexistent/ca.crt"}}}, "is not a file"),
    ({"destination_tls": {"PACS": {"password": "x"}}}, "Extra inputs are not permitted"),
    ({"dicomweb_auth": {"https://other.example.org/": {"bearer_env": "T"}}},
     "not one of dicomweb_destinations"),
    ({"dicomweb_auth": {URL: {}}}, "exactly one of"),
    ({"dicomweb_auth": {URL: {"bearer_env": "T", "basic_file": "/f"}}}, "exactly one of"),
    ({"dicomweb_auth": {URL: {"bearer": SECRET}}}, "Extra inputs are not permitted"),
])
def test_bad_outbound_settings_are_refused_naming_the_problem(change: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(destinations=["PACS@pacs.example.org:104"], dicomweb_destinations=[URL],
                 **change)


def test_a_settings_error_never_repeats_a_secret() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(dicomweb_destinations=[f"https://user:{SECRET}@archive.example.org/dicom-web"])
    assert "holds credentials; give them in dicomweb_auth" in str(refused.value)
    assert SECRET not in str(refused.value)  # what `cxr-node jobs --config` prints
    with pytest.raises(ValidationError) as refused:  # an error about the whole: no input shown
        Settings(http_token=SECRET, destination_tls={"NOPE": {}})
    assert "AE title of no destination" in str(refused.value)
    assert SECRET not in str(refused.value)


def test_credentials_are_read_when_sent_from_env_or_file_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHIVE_TOKEN", SECRET)
    bearer = DicomwebAuth(bearer_env="ARCHIVE_TOKEN")
    assert authorization(bearer) == f"Bearer {SECRET}"
    monkeypatch.setenv("ARCHIVE_TOKEN", "renewed")  # no restart needed
    assert authorization(bearer) == "Bearer renewed"
    creds = tmp_path / "archive.creds"
    creds.write_text(f"cxr:{SECRET}:with-colon\n")
    basic = DicomwebAuth(basic_file=creds)
    expected = requests.Request("POST", URL, auth=("cxr", f"{SECRET}:with-colon")).prepare()
    assert authorization(basic) == expected.headers["Authorization"]
    for auth in (bearer, basic):
        shown = f"{auth.http_auth()!r} {auth.http_auth()} {auth!r}"
        assert SECRET not in shown and "renewed" not in shown


def test_credentials_that_cannot_be_read_fail_the_delivery_naming_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    path = result_file(tmp_path / "sr.dcm")
    not_basic = tmp_path / "token-only"
    not_basic.write_text(SECRET)
    cases = [(DicomwebAuth(bearer_env="NO_SUCH_TOKEN"),
              "environment variable NO_SUCH_TOKEN is not set"),
             (DicomwebAuth(bearer_file=tmp_path / "gone"), "cannot be read: No such file"),
             (DicomwebAuth(basic_file=not_basic), "are not user:password")]
    for auth, reason in cases:
        [(sent, error)] = stow_files("http://127.0.0.1:9/dicom-web", [path], 5, auth)
        assert sent == path and error is not None and reason in error, error
        assert SECRET not in error
        with pytest.raises(OutboundError):
            auth.http_auth()


def test_tls_files_that_cannot_be_loaded_fail_the_delivery_naming_them(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not a certificate\n")
    tls = DestinationTLS(ca=ca)
    with pytest.raises(OutboundError, match="cannot be loaded"):
        tls.client_context()
    item = Outgoing(result_file(tmp_path / "sc.dcm"), SecondaryCaptureImageStorage,
                    ExplicitVRLittleEndian)
    [(_, error)] = send_files(Peer("PACS", "127.0.0.1", 9), [item], "CXRNODE", 5, tls=tls)
    assert error is not None and error.startswith("TLS to PACS@127.0.0.1:9: TLS files")
    assert str(ca) in error
