"""Config errors are one line and exit 2 (hardening issue, item 10), and typos are warned about."""

from __future__ import annotations

from pathlib import Path

import pytest

from lottery.auth import load_secrets
from lottery.config import load_agency_config, load_server_config
from lottery.errors import ConfigError

from .helpers import run_lottery

SECRET_A = "ab" * 32
SECRET_B = "cd" * 32


def _private(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("case", "args", "files", "expected"),
    [
        ("% in config.ini", ["--config", "config.ini"],
         {"config.ini": "[DEFAULT]\nSERVER_LISTEN_BACKLOG = 12%\n"},
         "config.ini SERVER_LISTEN_BACKLOG: '12%' is not an integer"),
        ("non-ASCII digit id", ["--secrets", "secrets.txt"], {"secrets.txt": f"²: {SECRET_A}\n"},
         "'²' is not an agency id"),
        ("secrets not UTF-8", ["--secrets", "secrets.txt"], {"secrets.txt": b"\xff\xfe1: ab\n"},
         "not UTF-8"),
        ("huge backlog", ["--listen-backlog", "99999999999999999999"], {},
         "--listen-backlog: 99999999999999999999 must be from 1 to 65535"),
        ("infinite timeout", ["--timeout-idle", "inf"], {}, "--timeout-idle: inf must be"),
        ("empty secrets", ["--secrets", "secrets.txt"], {"secrets.txt": "# nothing yet\n"},
         "holds no agency secrets"),
        ("missing agency", ["--secrets", "secrets.txt"], {"secrets.txt": f"1: {SECRET_A}\n"},
         "no secret for agency 2 of 1..2"),
        ("shared secret", ["--secrets", "secrets.txt"],
         {"secrets.txt": f"1: {SECRET_A}\n2: {SECRET_A}\n"}, "the same secret as agency 1"),
    ],
)  # fmt: skip
def test_server_config_errors_are_one_line_and_exit_2(
    tmp_path: Path, case: str, args: list[str], files: dict[str, str | bytes], expected: str
) -> None:
    """Each bad setting the hardening pass found gives one line naming it, and exit 2."""
    for name, content in files.items():
        _private(tmp_path / name, content)
    done = run_lottery(
        "server", "--agencies", "2", "--port", "0", "--data-dir", "data", *args, cwd=tmp_path
    )
    assert done.returncode == 2, (case, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, (case, done.stderr)
    assert lines[0].startswith("lottery server: ") and expected in lines[0], (case, lines[0])


def test_percent_in_config_ini_is_taken_literally(tmp_path: Path) -> None:
    """A '%' in a config.ini value is that character: no interpolation, no traceback."""
    ini = tmp_path / "config.ini"
    ini.write_text("[DEFAULT]\nSERVER_DATA_DIR = ./data%1\n", encoding="utf-8")
    assert load_server_config({}, {}, str(ini)).data_dir == "./data%1"


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """config.ini and config.yaml that are not UTF-8 are one ConfigError naming the file."""
    ini = tmp_path / "config.ini"
    ini.write_bytes(b"[DEFAULT]\nSERVER_HOST = caf\xe9\n")
    with pytest.raises(ConfigError, match=r"config\.ini"):
        load_server_config({}, {}, str(ini))
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_bytes(b"id: 1\nserver:\n  address: caf\xe9:1\n")
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        load_agency_config({}, {}, str(yaml_file))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no agency secrets"),
        (f"operator: {SECRET_B}\n", "holds no agency secrets"),
        (f"1: {SECRET_A}\n", "no secret for agency 2"),
        (f"1: {SECRET_A}\n2: {SECRET_A}\n", "agency 2 has the same secret as agency 1"),
        (f"١: {SECRET_A}\n2: {SECRET_B}\n", "is not an agency id"),
    ],
)
def test_secrets_that_would_lock_out_or_confuse_agencies_are_refused(
    tmp_path: Path, content: str, message: str
) -> None:
    """An empty file, a missing agency, a shared secret or a non-ASCII id is a ConfigError."""
    path = _private(tmp_path / "secrets.txt", content)
    with pytest.raises(ConfigError, match=message):
        load_secrets(path, 2)


def test_many_missing_agencies_still_fit_one_line(tmp_path: Path) -> None:
    """The missing-agencies message names a few and counts the rest."""
    path = _private(tmp_path / "secrets.txt", f"1: {SECRET_A}\n")
    with pytest.raises(ConfigError) as error:
        load_secrets(path, 1000)
    message = str(error.value)
    assert "\n" not in message and "(999 in all)" in message and len(message) < 300
