"""Shared fixtures: the time unit, log capture, and a TLS certificate."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from lottery.log import configure

#: PostgreSQL fixtures (tests/pg.py): pg_database, pg_dsn, pg_cluster.
pytest_plugins = ["tests.pg"]

#: One time unit, in seconds. Slow machines can scale every test timeout with
#: LOTTERY_TEST_TIME_UNIT=2 (websockets' MS idea).
UNIT = float(os.environ.get("LOTTERY_TEST_TIME_UNIT", "1"))
#: Under CI a test that needs a service (PostgreSQL, a browser) fails instead of skipping.
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Route structlog's tp0 lines (INFO and up) to a StringIO for the test to read."""
    stream = io.StringIO()
    configure("INFO", "console", stream)
    yield stream
    structlog.reset_defaults()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command: (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30 * UNIT,
    )  # fmt: skip
    os.chmod(key, 0o600)
    return cert, key
