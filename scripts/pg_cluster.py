#!/usr/bin/env python3
"""A throwaway PostgreSQL cluster in a folder, for a user without one, tests and chaos.

    scripts/pg_cluster.py start DIR     # initdb (first time) + start; prints the DSN
    scripts/pg_cluster.py restart DIR [--immediate]
    scripts/pg_cluster.py stop DIR [--remove]

It needs PostgreSQL's server binaries (``initdb``, ``pg_ctl``: Debian's
``postgresql`` package puts them in /usr/lib/postgresql/<version>/bin, found
here; or set PG_BIN). The cluster listens on 127.0.0.1 on a free port (kept
in DIR/port for restarts), with trust authentication for user ``postgres``,
and its database ``lottery``: ``lottery server --store $(scripts/pg_cluster.py
start pg)``. PostgreSQL refuses to run as root, so under root the cluster
belongs to the ``postgres`` system user (DIR must then be reachable by it:
not under a mode-700 folder).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

__all__ = ["dsn", "fresh_database", "pg_bin", "restart", "start", "stop"]

TIMEOUT = 60  # seconds for initdb, start and stop
DATABASE = "lottery"


def pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None if they are not installed."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(str(Path(found).parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _as_owner() -> list[str]:
    """The command prefix that runs PostgreSQL's tools as a user they accept."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def _run(args: list[str], what: str) -> None:
    done = subprocess.run(
        _as_owner() + args, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise SystemExit(f"pg_cluster: {what} failed: {detail[-1] if detail else done.returncode}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dsn(folder: str | os.PathLike[str]) -> str:
    """The DSN of the cluster in ``folder`` (started or not)."""
    port = (Path(folder) / "port").read_text().strip()
    return f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"


def _pg_ctl(folder: Path, *args: str) -> list[str]:
    binaries = pg_bin()
    if binaries is None:
        raise SystemExit("pg_cluster: PostgreSQL's server binaries (initdb, pg_ctl) are missing")
    return [str(binaries / "pg_ctl"), "-D", str(folder / "data"), *args]


def start(folder: str | os.PathLike[str]) -> str:
    """Create the cluster in ``folder`` if it is new, start it, and return its DSN."""
    root = Path(folder).resolve()
    binaries = pg_bin()
    if binaries is None:
        raise SystemExit("pg_cluster: PostgreSQL's server binaries (initdb, pg_ctl) are missing")
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
    fresh = not (root / "data").exists()
    if fresh:
        _run(
            [str(binaries / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8", "--locale", "C"],
            "initdb",
        )  # fmt: skip
        (root / "port").write_text(f"{_free_port()}\n")
    port = (root / "port").read_text().strip()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    _run(_pg_ctl(root, "-o", options, "-l", str(root / "log"), "-w", "-t", str(TIMEOUT), "start"),
         "start")  # fmt: skip
    if fresh:
        _run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "postgres",
              DATABASE], "createdb")  # fmt: skip
    return dsn(root)


def stop(folder: str | os.PathLike[str], *, remove: bool = False, mode: str = "fast") -> None:
    """Stop the cluster in ``folder`` (``mode``: fast, or immediate for a crash);
    ``remove`` deletes the folder too."""
    root = Path(folder).resolve()
    if (root / "data" / "postmaster.pid").exists():
        _run(_pg_ctl(root, "-m", mode, "-w", "-t", str(TIMEOUT), "stop"), "stop")
    if remove:
        shutil.rmtree(root, ignore_errors=True)


def restart(folder: str | os.PathLike[str], *, immediate: bool = False) -> None:
    """Restart the cluster; ``immediate`` kills it without a checkpoint (a crash, to
    PostgreSQL: it recovers from its log), as ``pg_ctlcluster restart -m immediate``."""
    root = Path(folder).resolve()
    port = (root / "port").read_text().strip()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    mode = "immediate" if immediate else "fast"
    _run(_pg_ctl(root, "-m", mode, "-o", options, "-l", str(root / "log"), "-w", "-t",
                 str(TIMEOUT), "restart"), "restart")  # fmt: skip


async def _admin(dsn: str, sql: str) -> None:
    import asyncpg  # only here: the cluster commands need no driver

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database(dsn: str, prefix: str = "lottery") -> Iterator[str]:
    """A new database on the server of ``dsn`` (its DSN), dropped afterwards: one round each."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(_admin(dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn)._replace(path=f"/{name}"))
    finally:
        asyncio.run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "restart", "dsn"):
        sub = commands.add_parser(name)
        sub.add_argument("dir", help="the cluster's folder")
        if name == "stop":
            sub.add_argument("--remove", action="store_true", help="delete the folder too")
        if name == "restart":
            sub.add_argument("--immediate", action="store_true", help="crash-restart")
    args = parser.parse_args(argv)
    if args.command == "start":
        print(start(args.dir))
    elif args.command == "stop":
        stop(args.dir, remove=args.remove)
    elif args.command == "restart":
        restart(args.dir, immediate=args.immediate)
    else:
        print(dsn(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
