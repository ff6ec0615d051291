"""Packaging: the wheel ``pip install .`` builds, and the ``lottery`` command it installs.

The wheel is built once per run with the venv's pip from a copy of exactly the
files the Dockerfile copies (pyproject.toml, README.md, lottery/), so the
checkout gets no build/ or egg-info and the image's build context is known to
be enough. It is then installed with ``--no-deps`` into a fresh virtualenv
that borrows its dependencies from the project's venv through a ``.pth`` line,
which keeps the test offline and quick.
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.message import Message
from pathlib import Path

import pytest

import lottery

from .conftest import UNIT

pytestmark = [pytest.mark.timeout(180 * UNIT), pytest.mark.packaging]

ROOT = Path(__file__).resolve().parents[1]
#: What the wheel is built from; the Dockerfile copies the same (test_docker checks it).
SOURCES = ("pyproject.toml", "README.md", "lottery")
EXTRAS = {"metrics", "ui", "fast", "bench", "test"}


def _venv_can_build_wheels() -> bool:
    """Whether the venv's setuptools builds wheels by itself (70.1 and later, or with wheel)."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    if (major, minor) >= (70, 1):
        return True
    try:
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel`` builds from the package's sources."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    args = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)]
    # Without build isolation when the venv can build (no index needed); else pip
    # fetches the backend pyproject.toml asks for.
    if _venv_can_build_wheels():
        args.append("--no-build-isolation")
    proc = _run(args, cwd=src, timeout=150 * UNIT)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    wheels = list(out.glob("lottery-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _dist_info(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [m for m in archive.namelist() if m.endswith(f".dist-info/{name}")]
        return archive.read(member).decode("utf-8")


@pytest.fixture(scope="module")
def metadata(wheel: Path) -> Message:
    return email.parser.Parser().parsestr(_dist_info(wheel, "METADATA"))


def test_wheel_is_named_for_the_version(wheel: Path, metadata: Message) -> None:
    """The wheel is lottery at the package's __version__, pure Python."""
    assert metadata["Name"] == "lottery"
    assert metadata["Version"] == lottery.__version__
    assert wheel.name == f"lottery-{lottery.__version__}-py3-none-any.whl"


def test_wheel_declares_the_console_script(wheel: Path) -> None:
    """entry_points.txt declares the console script lottery = lottery.cli:run (main, then exit)."""
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_dist_info(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == {"lottery": "lottery.cli:run"}


def test_wheel_metadata_requires_python_and_extras(metadata: Message) -> None:
    """METADATA: Requires-Python >=3.11, and the extras metrics, ui, fast, bench and test."""
    assert metadata["Requires-Python"] == ">=3.11"
    assert set(metadata.get_all("Provides-Extra") or []) >= EXTRAS
    requires = metadata.get_all("Requires-Dist") or []

    def extra(name: str) -> set[str]:
        marker = f'extra == "{name}"'
        return {re.split(r"[<>=!~; \[]", r)[0].lower() for r in requires if marker in r}

    assert "prometheus-client" in {r.replace("_", "-") for r in extra("metrics")}
    assert "rich" in extra("ui")
    assert "google-re2" in {r.replace("_", "-") for r in extra("fast")}
    assert "matplotlib" in extra("bench")
    assert {"pytest", "pytest-timeout"} <= extra("test")
    base = {re.split(r"[<>=!~; \[]", r)[0].lower() for r in requires if "extra ==" not in r}
    assert {"structlog", "pyyaml"} <= base


def test_wheel_holds_the_package_and_nothing_else(wheel: Path) -> None:
    """The wheel has every module of lottery/ (with __main__) and no tests, scripts or caches."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    modules = {f"lottery/{p.name}" for p in (ROOT / "lottery").glob("*.py")}
    assert "lottery/__main__.py" in modules
    assert modules <= set(names)
    tops = {name.split("/")[0] for name in names}
    assert tops == {"lottery", f"lottery-{lottery.__version__}.dist-info"}
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_wheel_ships_the_round_page(wheel: Path) -> None:
    """lottery/web and its one static file, round.html (package data), are in the wheel as is."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        page = archive.read("lottery/web/round.html")
    assert {"lottery/web/__init__.py", "lottery/web/http.py"} <= names
    assert page == (ROOT / "lottery" / "web" / "round.html").read_bytes()


def test_installed_wheel_runs_lottery_and_python_m_lottery(wheel: Path, tmp_path: Path) -> None:
    """In a fresh venv, the wheel's lottery command and python -m lottery print the version."""
    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, 60 * UNIT)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    install = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         "--no-deps", "--no-index", str(wheel)],
        tmp_path,
        90 * UNIT,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    # The dependencies (structlog, PyYAML, uvloop...) come from the project's venv,
    # appended after the new venv's own site-packages; the project's editable
    # install is not picked up (a plain path line runs no .pth files there).
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
             tmp_path, 30 * UNIT).stdout.strip()
    )  # fmt: skip
    borrowed = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_lottery_test_deps.pth").write_text("\n".join(borrowed) + "\n", encoding="utf-8")

    expected = f"lottery {lottery.__version__}"
    command = _run([str(venv / "bin" / "lottery"), "--version"], tmp_path, 30 * UNIT)
    assert (command.returncode, command.stdout.strip()) == (0, expected), command.stderr
    module = _run([str(python), "-m", "lottery", "--version"], tmp_path, 30 * UNIT)
    assert (module.returncode, module.stdout.strip()) == (0, expected), module.stderr
    where = _run(
        [str(python), "-c", "import lottery; print(lottery.__file__)"], tmp_path, 30 * UNIT
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
