"""Agency secrets: the file the server reads, and ``lottery make-secrets``.

With a secrets file, the server answers each HELLO with a CHALLENGE (a fresh
random nonce) and admits the agency only if its AUTH frame carries
``HMAC-SHA256(secret, context || agency id || nonce)`` (see
`lottery.protocol.auth_mac`). The secret never crosses the wire, a captured
proof is useless on another connection, and an agency can only speak as the
id whose secret it holds.

File format, one agency per line, ``#`` comments allowed::

    # agency: secret (64 hex digits)
    1: 3f2a...
    2: 91bc...
    operator: 5d0e...

The ``operator`` line is optional: its token lets a person (``lottery
status``, the round's web page) see the whole round when the server runs
with secrets; agencies never use it.

The file must be readable by its owner only (mode 0600 or stricter): the
server refuses a file others can read.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .errors import ConfigError

__all__ = [
    "OPERATOR",
    "SECRET_BYTES",
    "agency_secret_path",
    "load_operator_token",
    "load_secrets",
    "make_secrets",
    "parse_secret",
]

SECRET_BYTES = 32
#: The key of the operator token's line in a secrets file.
OPERATOR = "operator"


def parse_secret(text: str, where: str) -> bytes:
    """A secret written as hex digits, as bytes (at least 16 bytes long)."""
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: the secret is not hex digits") from None
    if len(secret) < 16:
        raise ConfigError(f"{where}: the secret is {len(secret)} bytes; it needs at least 16")
    return secret


def _read_private(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"secrets file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"secrets file {path}: not UTF-8 text (byte {exc.start}); "
            "write it with lottery make-secrets"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"secrets file {path}: readable by others (mode {stat.S_IMODE(mode):o}); "
            f"chmod 600 {path}"
        )
    return text


def _lines(path: Path) -> list[tuple[str, str, str]]:
    """(where, key, secret text) of each line that is not blank or a comment."""
    entries = []
    for number, line in enumerate(_read_private(path).splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"secrets file {path}, line {number}"
        key, sep, secret_text = line.partition(":")
        if not sep:
            raise ConfigError(f"{where}: expected 'agency: secret'")
        entries.append((where, key.strip(), secret_text))
    return entries


def load_secrets(path: str | os.PathLike[str], agencies: int) -> dict[int, bytes]:
    """Read a secrets file: agency id → secret (the operator line is not an agency's).

    Every agency 1..``agencies`` needs its own line and its own secret: a
    missing agency would be refused all round, and a shared secret lets one
    agency speak for another.

    Raises:
        ConfigError: unreadable or non-UTF-8 file, group/other permissions, a
            bad line, an agency id outside 1..``agencies`` or given twice, an
            agency missing, or two agencies with one secret.
    """
    table: dict[int, bytes] = {}
    owners: dict[bytes, int] = {}
    for where, agency_text, secret_text in _lines(Path(path)):
        if agency_text == OPERATOR:
            continue
        # isascii: "²".isdigit() is true, and int() refuses it.
        if not (agency_text.isascii() and agency_text.isdigit()):
            raise ConfigError(
                f"{where}: {agency_text!r} is not an agency id; expected 'agency: secret'"
            )
        agency = int(agency_text)
        if not 1 <= agency <= agencies:
            raise ConfigError(f"{where}: agency {agency} is not in 1..{agencies}")
        if agency in table:
            raise ConfigError(f"{where}: agency {agency} appears twice")
        secret = parse_secret(secret_text, where)
        if secret in owners:
            raise ConfigError(
                f"{where}: agency {agency} has the same secret as agency {owners[secret]}; "
                "each agency needs its own"
            )
        table[agency], owners[secret] = secret, agency
    if not table:
        raise ConfigError(
            f"secrets file {path}: holds no agency secrets, so every agency would be refused"
        )
    missing = [agency for agency in range(1, agencies + 1) if agency not in table]
    if missing:
        raise ConfigError(
            f"secrets file {path}: no secret for {_agencies_text(missing)} "
            f"of 1..{agencies}, which the server would refuse; "
            f"lottery make-secrets {agencies} FILE writes a complete one"
        )
    return table


def _agencies_text(ids: list[int]) -> str:
    """``agency 3`` or ``agencies 1, 2, 3 … (40 in all)``: short enough for one line."""
    if len(ids) == 1:
        return f"agency {ids[0]}"
    shown = ", ".join(str(i) for i in ids[:5])
    return f"agencies {shown}" + (f" … ({len(ids)} in all)" if len(ids) > 5 else "")


def load_operator_token(path: str | os.PathLike[str]) -> bytes | None:
    """The operator token of a secrets file (its ``operator:`` line), or None if it has none."""
    for where, key, secret_text in _lines(Path(path)):
        if key == OPERATOR:
            return parse_secret(secret_text, where)
    return None


def agency_secret_path(directory: str | os.PathLike[str], agency: int) -> Path:
    """Where ``make-secrets --per-agency-dir`` puts one agency's secret."""
    return Path(directory) / f"agency-{agency}.secret"


def make_secrets(
    agencies: int,
    path: str | os.PathLike[str],
    per_agency_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Write a new secrets file for agencies 1..``agencies``, mode 0600.

    With ``per_agency_dir``, also write each agency's secret alone to
    ``agency-<id>.secret`` there (mode 0600), the file an agency's
    ``--secret-file`` reads. Refuses to overwrite any existing file (a lost
    secret locks an agency out); then nothing is written.
    """
    table = {agency: secrets.token_hex(SECRET_BYTES) for agency in range(1, agencies + 1)}
    lines = ["# lottery agency secrets: agency: secret (hex). Keep this file private."]
    lines += [f"{agency}: {secret}" for agency, secret in table.items()]
    lines += [f"{OPERATOR}: {secrets.token_hex(SECRET_BYTES)}"]
    files = {Path(path): "\n".join(lines) + "\n"}
    if per_agency_dir is not None:
        try:
            Path(per_agency_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--per-agency-dir {per_agency_dir}: {exc.strerror or exc}") from None
        for agency, secret in table.items():
            files[agency_secret_path(per_agency_dir, agency)] = secret + "\n"
    for file in files:
        if file.exists():
            raise ConfigError(f"{file} exists; remove it first or choose another name")
    for file, content in files.items():
        _write_private(file, content)


def _write_private(path: Path, content: str) -> None:
    try:
        # O_EXCL: never clobber; mode 0600 from the start, never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; remove it first or choose another name") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(content)
