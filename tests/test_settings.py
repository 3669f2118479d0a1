"""Settings: precedence flags > environment > TOML file > defaults, and what is refused."""

from __future__ import annotations

import contextlib
import re
import threading
import tomllib
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError
from pydantic_settings import EnvSettingsSource

from node.cli.main import build_parser, settings_from_args
from node.settings import Peer, Settings

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "cxr-node.example.toml"
#: a commented-out setting in the example: ``# name = value`` (TOML has no null to write)
COMMENTED_SETTING = re.compile(r"^#\s*([a-z_]+\s*=.*)$")


def example_settings() -> tuple[dict, dict]:
    """The example's settings as TOML reads them, and those it shows commented out."""
    text = EXAMPLE.read_text()
    commented: dict = {}
    for line in text.splitlines():
        if m := COMMENTED_SETTING.match(line):
            commented.update(tomllib.loads(m.group(1)))
    return tomllib.loads(text), commented


def test_readme_example_config_is_complete_and_valid() -> None:
    active, commented = example_settings()
    assert not set(active) & set(commented), "set and commented out at once"
    fields = set(Settings.model_fields)
    documented = set(active) | set(commented)
    assert not fields - documented, f"settings missing from the example: {fields - documented}"
    assert not documented - fields, f"unknown keys in the example: {documented - fields}"
    for name, value in commented.items():  # commented out only because their default is None
        field = Settings.model_fields[name]
        assert field.default is None, f"{name} is commented out but defaults to {field.default}"
        TypeAdapter(field.annotation).validate_python(value)
    settings = Settings.load(EXAMPLE)
    assert settings.destination_peers == [Peer("PACS", "pacs.example.org", 104)]
    assert settings.peer_for("MODALITY1") == Peer("MODALITY1", "10.1.2.3", 104)
    assert settings.model_fields_set == set(active)  # every key the file sets was read


def test_each_load_reads_its_own_config_file_also_from_two_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AE_TITLE", "DICOM_PORT"):
        monkeypatch.delenv(f"CXR_NODE_{name}", raising=False)
    files = {}
    for ae, port in (("FIRST", 1001), ("SECOND", 1002)):
        files[ae] = tmp_path / f"{ae.lower()}.toml"
        files[ae].write_text(f'ae_title = "{ae}"\ndicom_port = {port}\n')

    def seen(settings: Settings) -> tuple[str, int]:
        return settings.ae_title, settings.dicom_port

    assert seen(Settings.load(files["FIRST"])) == ("FIRST", 1001)
    assert seen(Settings.load(files["SECOND"])) == ("SECOND", 1002)
    assert seen(Settings.load(None)) == ("CXRNODE", 11112)  # no file: defaults again
    assert seen(Settings.load(files["FIRST"], dicom_port=7)) == ("FIRST", 7)
    assert Settings.model_config.get("toml_file") is None
    assert isinstance(Settings.load(files["FIRST"]), Settings)

    # Two threads load at once, again and again. Each load builds its environment source
    # before it reads the file; the two loads meet there, so each is sure to be under way while
    # the other reads its file (with the file passed through the class, one of the two would
    # read the other's file in every round).
    rounds = 20
    meet = threading.Barrier(2, timeout=30)
    build_env_source = EnvSettingsSource.__init__

    def meeting_env_source(self: EnvSettingsSource, *args: object, **kwargs: object) -> None:
        build_env_source(self, *args, **kwargs)
        if type(self) is EnvSettingsSource:
            with contextlib.suppress(threading.BrokenBarrierError):  # a thread failed: below
                meet.wait()

    got: dict[str, list[tuple[str, int]]] = {ae: [] for ae in files}
    errors: list[BaseException] = []

    def load_many(ae: str) -> None:
        try:
            for _ in range(rounds):
                got[ae].append(seen(Settings.load(files[ae])))
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)
            meet.abort()

    threads = [threading.Thread(target=load_many, args=(ae,)) for ae in files]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EnvSettingsSource, "__init__", meeting_env_source)
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    assert got["FIRST"] == [("FIRST", 1001)] * rounds
    assert got["SECOND"] == [("SECOND", 1002)] * rounds
    assert seen(Settings()) == ("CXRNODE", 11112)  # and nothing was left behind


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
