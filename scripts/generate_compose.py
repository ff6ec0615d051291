#!/usr/bin/env python3
"""Write a docker compose file for a round: the server and N agencies.

    python scripts/generate_compose.py N OUT        # OUT "-" writes to stdout
    ./generar-compose.sh OUT N                      # tp0's name and argument order
    python scripts/generate_compose.py N OUT --servers K    # K servers, one PostgreSQL

The file has a ``server`` service and ``client1`` .. ``clientN``, all on one
network (``testing_net``) and all from the one image the top-level Dockerfile
builds (entrypoint ``lottery``). The server is told N (``AGENCIES``), keeps its
store on a named volume and is healthy once ``lottery ping`` gets an answer;
the agencies start after that. Each agency gets its id (``CLI_ID``), the
server's address, the shared ``docker/config.yaml`` and its own bets file,
``<bets-dir>/agency-<i>.csv`` (``scripts/gen_dataset.py`` writes those), mounted
read-only (tp0 ej2 and ej6).

Paths in the file are relative to the checkout, where compose resolves them
when OUT is written there (tp0 keeps ``docker-compose-dev.yaml`` at the top).
The same N gives the same bytes. A bad N is one line on stderr and exit 2.

``--servers K`` (default 1, the file above unchanged) makes the round survive
the loss of a server: a ``postgres`` service (the official image, its data
on a named volume, healthy once ``pg_isready`` says so, the password from
``POSTGRES_PASSWORD`` in compose's environment, ``lottery`` if unset) and
``server1`` .. ``serverK``, each with ``LOTTERY_STORE`` (``--store``) pointing
at it, started once it is healthy. Every agency gets the whole server list
in ``CLI_SERVER_ADDRESS``, starting at a different server so that the
agencies spread over them; it moves to the next when one stops answering.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

PROJECT = "tp0"
NETWORK = "testing_net"
DATA_VOLUME = "server-data"
#: The server's port: docker/config.ini's SERVER_PORT (a test keeps them equal).
PORT = 12345
#: The server's store in the container; the Dockerfile creates it, owned by the
#: image's user, so a new named volume mounted there is writable.
DATA_DIR = "/var/lib/lottery"
SERVER_CONFIG = "./docker/config.ini"
AGENCY_CONFIG = "./docker/config.yaml"
BETS_IN_CONTAINER = "/data/agency.csv"
DEFAULT_BETS_DIR = "./demo"
#: The server's AGENCIES setting accepts no more (lottery/config.py).
MAX_AGENCIES = 100_000
#: Servers over one PostgreSQL: more would be a typo for N.
MAX_SERVERS = 16
POSTGRES_IMAGE = "postgres:15"
POSTGRES_VOLUME = "postgres-data"
POSTGRES_USER = POSTGRES_DB = "lottery"
#: Compose substitutes it from the environment (or an .env file) when it reads the file.
POSTGRES_PASSWORD = "${POSTGRES_PASSWORD:-lottery}"
STORE_URL = f"postgresql://{POSTGRES_USER}:{POSTGRES_PASSWORD}@postgres:5432/{POSTGRES_DB}"

EXIT_USAGE = 2


def image_name() -> str:
    """``lottery:<version>``, the version read from the package without importing it."""
    source = (ROOT / "lottery" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', source, re.MULTILINE)
    return f"lottery:{match.group(1) if match else 'latest'}"


def parse_agencies(raw: str) -> int:
    """N from the command line: an integer from 1 to `MAX_AGENCIES`, else ValueError."""
    text = raw.strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"N must be a positive integer, not {raw!r}")
    n = int(text)
    if not 1 <= n <= MAX_AGENCIES:
        raise ValueError(f"N must be from 1 to {MAX_AGENCIES}, not {n}")
    return n


def parse_servers(raw: str) -> int:
    """K from ``--servers``: an integer from 1 to `MAX_SERVERS`, else ValueError."""
    text = raw.strip()
    if not re.fullmatch(r"[0-9]+", text) or not 1 <= int(text) <= MAX_SERVERS:
        raise ValueError(f"--servers K must be from 1 to {MAX_SERVERS}, not {raw!r}")
    return int(text)


def server_names(k: int) -> list[str]:
    """``server`` alone, or ``server1`` .. ``serverK`` over PostgreSQL."""
    return ["server"] if k == 1 else [f"server{i}" for i in range(1, k + 1)]


def bets_file(bets_dir: str, agency: int) -> str:
    return f"{bets_dir.rstrip('/')}/agency-{agency}.csv"


def server_service(
    n: int, image: str, name: str = "server", shared: bool = False
) -> dict[str, Any]:
    """One server; ``shared``: its round lives in the ``postgres`` service, not on a volume."""
    service: dict[str, Any] = {
        "container_name": name,
        "image": image,
        "build": {"context": ".", "dockerfile": "Dockerfile"},
        "init": True,
        "command": ["server", "--config", "/config/config.ini"],
        "environment": {
            "AGENCIES": str(n),
            "SERVER_HOST": "0.0.0.0",
            "SERVER_DATA_DIR": DATA_DIR,
        },
        "volumes": [
            f"{SERVER_CONFIG}:/config/config.ini:ro",
            f"{DATA_VOLUME}:{DATA_DIR}",
        ],
        "networks": [NETWORK],
        "healthcheck": {
            "test": ["CMD", "lottery", "ping", f"127.0.0.1:{PORT}", "--timeout", "2"],
            "interval": "2s",
            "timeout": "5s",
            "retries": 15,
            "start_period": "5s",
        },
    }
    if shared:
        service["environment"]["LOTTERY_STORE"] = STORE_URL
        service["volumes"] = service["volumes"][:1]  # nothing of the round is kept here
        service["depends_on"] = {"postgres": {"condition": "service_healthy"}}
    return service


def postgres_service() -> dict[str, Any]:
    """The official PostgreSQL image, its data on a named volume, healthy once it accepts."""
    return {
        "container_name": "postgres",
        "image": POSTGRES_IMAGE,
        "environment": {
            "POSTGRES_USER": POSTGRES_USER,
            "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
            "POSTGRES_DB": POSTGRES_DB,
        },
        "volumes": [f"{POSTGRES_VOLUME}:/var/lib/postgresql/data"],
        "networks": [NETWORK],
        "healthcheck": {
            "test": ["CMD", "pg_isready", "-U", POSTGRES_USER, "-d", POSTGRES_DB],
            "interval": "2s",
            "timeout": "5s",
            "retries": 15,
            "start_period": "5s",
        },
    }


def agency_service(
    agency: int, image: str, bets_dir: str, servers: list[str] | None = None
) -> dict[str, Any]:
    """Agency ``agency``; with several ``servers`` it starts at its own (agency i at i mod K)."""
    servers = servers or ["server"]
    start = (agency - 1) % len(servers)
    ordered = servers[start:] + servers[:start]
    return {
        "container_name": f"client{agency}",
        "image": image,
        "init": True,
        "command": ["agency", "--bets", BETS_IN_CONTAINER, "--config", "/config/config.yaml"],
        "environment": {
            "CLI_ID": str(agency),
            "CLI_SERVER_ADDRESS": ",".join(f"{name}:{PORT}" for name in ordered),
        },
        "volumes": [
            f"{AGENCY_CONFIG}:/config/config.yaml:ro",
            f"{bets_file(bets_dir, agency)}:{BETS_IN_CONTAINER}:ro",
        ],
        "networks": [NETWORK],
        "depends_on": {name: {"condition": "service_healthy"} for name in servers},
    }


def compose(
    n: int, bets_dir: str = DEFAULT_BETS_DIR, image: str | None = None, servers: int = 1
) -> dict[str, Any]:
    """The compose document for a round of ``n`` agencies on ``servers`` servers."""
    image = image or image_name()
    names = server_names(servers)
    services: dict[str, Any] = {"postgres": postgres_service()} if servers > 1 else {}
    for i, name in enumerate(names):
        services[name] = server_service(n, image, name, shared=servers > 1)
        if i:  # one image, built once (by the first server's service)
            del services[name]["build"]
    for agency in range(1, n + 1):
        services[f"client{agency}"] = agency_service(agency, image, bets_dir, names)
    volume = POSTGRES_VOLUME if servers > 1 else DATA_VOLUME
    return {
        "name": PROJECT,
        "services": services,
        "networks": {NETWORK: {"driver": "bridge"}},
        "volumes": {volume: {}},
    }


def render(n: int, bets_dir: str = DEFAULT_BETS_DIR, servers: int = 1) -> str:
    on = f" on {servers} servers sharing one PostgreSQL" if servers > 1 else ""
    header = (
        f"# A round of {n} agencies{on}. Generated by scripts/generate_compose.py;\n"
        "# edit that script, not this file. Run from the checkout: docker compose -f FILE up\n"
    )
    document = compose(n, bets_dir, servers=servers)
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def _missing_bets(n: int, bets_dir: str) -> list[str]:
    return [
        bets_file(bets_dir, agency)
        for agency in range(1, n + 1)
        if not (ROOT / bets_file(bets_dir, agency)).is_file()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="generate_compose.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("agencies", metavar="N", help="agencies in the round, 1..N")
    parser.add_argument("out", metavar="OUT", help="the compose file to write, - for stdout")
    parser.add_argument(
        "--bets-dir",
        default=DEFAULT_BETS_DIR,
        help=f"where agency-<i>.csv are, relative to the checkout (default {DEFAULT_BETS_DIR})",
    )
    parser.add_argument(
        "--servers",
        metavar="K",
        default="1",
        help="servers of the round (default 1); K > 1 adds a postgres service they share",
    )
    args = parser.parse_args(argv)
    try:
        n = parse_agencies(args.agencies)
        k = parse_servers(args.servers)
    except ValueError as exc:
        print(f"generate_compose.py: {exc}", file=sys.stderr)
        return EXIT_USAGE

    text = render(n, args.bets_dir, k)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.out)
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"generate_compose.py: cannot write {out}: {exc}", file=sys.stderr)
            return 1
        servers = "server" if k == 1 else f"postgres, server1..server{k}"
        print(f"{out}: {servers} and {n} agencies (client1..client{n})")
        if out.resolve().parent != ROOT:
            print(
                f"note: paths in {out} are relative to the checkout; "
                f"run: docker compose --project-directory {ROOT} -f {out} up",
                file=sys.stderr,
            )
    missing = _missing_bets(n, args.bets_dir)
    if missing:
        print(
            f"note: {len(missing)} of {n} bets files are missing (first: {missing[0]}); make them "
            f"with: python scripts/gen_dataset.py --out {args.bets_dir} --agencies {n}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
