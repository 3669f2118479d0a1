"""Settings: precedence flags > environment > TOML file > defaults, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from node.cli.main import build_parser, settings_from_args
from node.settings import Peer, Settings

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "cxr-node.example.toml"


def test_readme_example_config_is_complete_and_valid() -> None:
    settings = Settings.load(EXAMPLE)
    assert settings.destination_peers == [Peer("PACS", "pacs.example.org", 104)]
    assert settings.peer_for("MODALITY1") == Peer("MODALITY1", "10.1.2.3", 104)
    text = EXAMPLE.read_text()
    for name in Settings.model_fields:  # every setting is documented in the example
        assert name in text, name


def test_precedence_flags_env_file_defaults(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "FILE"\ndicom_port = 2000\nbatch_size = 4\n')
    monkeypatch.setenv("CXR_NODE_DICOM_PORT", "3000")
    monkeypatch.setenv("CXR_NODE_BATCH_SIZE", "6")
    args = build_parser().parse_args(["serve", "--config", str(config), "--batch-size", "2",
                                      "--peer", "MOD=host:104"])
    s = settings_from_args(args)
    assert (s.ae_title, s.dicom_port, s.batch_size, s.workers) == ("FILE", 3000, 2, 2)
    assert s.peers == {"MOD": "host:104"}


@pytest.mark.parametrize(("change", "message"), [
    ({"ae_title": "A" * 17}, "AE title"),
    ({"destinations": ["PACS@host"]}, "AE@HOST:PORT"),
    ({"explain": "lime"}, "explain 'lime'"),
    ({"dicomweb_destinations": ["ftp://x"]}, "not an http"),
    ({"tls_cert": "/nonexistent.crt", "tls_key": "/nonexistent.key"}, "is not a file"),
    ({"tls_require_client_cert": True}, "needs tls_cert"),
])
def test_bad_settings_are_refused_naming_the_value(change: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**change)


def test_bad_config_on_the_command_line_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli.main import main

    config = tmp_path / "bad.toml"
    config.write_text('dicom_port = "many"\n')
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dicom_port" in err[0]
