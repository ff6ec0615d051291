"""PostgreSQL for the tests: a database per test module, a schema per test, throwaway clusters.

The shared server is ``LOTTERY_TEST_PG`` (default the development machines'
PostgreSQL, ``postgresql://postgres@127.0.0.1:5432/postgres``). Where none is
reachable these tests skip with one line, except under ``CI=true``, where
they fail: CI must prove they ran. ``pg_cluster`` starts a cluster of a
test's own (scripts/pg_cluster.py) for what must never touch the shared one,
such as restarting PostgreSQL.

Registered by tests/conftest.py (``pytest_plugins``), so any test module can
ask for the fixtures ``pg_database`` (module), ``pg_dsn`` (a fresh schema
per test) and ``pg_cluster``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

import pg_cluster as cluster

from .conftest import IN_CI

__all__ = ["PG_URL", "pg_cluster", "pg_database", "pg_dsn", "with_database"]

PG_URL = os.environ.get("LOTTERY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CONNECT_TIMEOUT = 5.0


def with_database(dsn: str, database: str, **query: str) -> str:
    """``dsn`` naming ``database`` (and server settings ``query``) instead of its own."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(
        parts._replace(path=f"/{database}", query=urllib.parse.urlencode(query))
    )


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL reachable ({reason})")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, uniquely named database for this test module (dropped after): its DSN."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    name = f"lottery_{module}_{secrets.token_hex(4)}"[:63]
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _unavailable(f"{PG_URL}: {exc}")
    try:
        yield with_database(PG_URL, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_dsn(pg_database: str) -> AsyncIterator[str]:
    """A DSN whose tables go to a new schema of the module's database: one round per test."""
    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(pg_database, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        yield with_database(pg_database, pg_database.rsplit("/", 1)[1], search_path=schema)
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def pg_cluster() -> Iterator[tuple[Path, str]]:
    """A throwaway PostgreSQL cluster of the test's own (folder, DSN), removed after."""
    if cluster.pg_bin() is None:
        _unavailable("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    # Not under pytest's mode-700 tmp_path: under root the cluster runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="lottery-pg-"))
    try:
        yield folder, cluster.start(folder)
    finally:
        cluster.stop(folder, remove=True)
