"""A real multi-host round: scripts/netns_round.sh, one network namespace per process.

The round itself needs root, iproute2's ``ip`` and permission to create network
namespaces; without them it is skipped with the reason. The syntax and
prerequisite checks of the script need none of these.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import UNIT

pytestmark = pytest.mark.timeout(240 * UNIT)

SCRIPT = Path(__file__).parents[1] / "scripts" / "netns_round.sh"
LOTTERY = Path(sys.executable).parent / "lottery"
#: The script's own bound on the agencies, and ours on the whole script.
ROUND_TIMEOUT = int(60 * UNIT)
SCRIPT_TIMEOUT = 150 * UNIT
EXIT_SKIP = 77


def _bash() -> str:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    return bash


def _script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETNS_ROUND_")}
    return {**env, "NETNS_ROUND_TIMEOUT": str(ROUND_TIMEOUT), **extra}


def _namespaces(ip: str) -> list[str]:
    listing = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]


def _netns_unavailable() -> str | None:
    """Why a namespace round cannot run here, or None if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create network namespaces"
    ip = shutil.which("ip")
    if ip is None:
        return "no `ip` command (iproute2)"
    probe = f"lotnsprobe{os.getpid()}"
    try:
        added = subprocess.run(
            [ip, "netns", "add", probe], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` did not run: {exc}"
    if added.returncode != 0:
        return f"cannot create a network namespace: {added.stderr.strip()}"
    subprocess.run([ip, "netns", "delete", probe], capture_output=True, timeout=10)
    return None


def test_script_syntax() -> None:
    """`bash -n` accepts the script."""
    result = subprocess.run(
        [_bash(), "-n", str(SCRIPT)], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr


def test_bad_usage_exits_2() -> None:
    """A bad --agencies is a one-line usage error with status 2, before anything is created."""
    result = subprocess.run(
        [_bash(), str(SCRIPT), "--agencies", "0", "--lottery", str(LOTTERY)],
        capture_output=True,
        text=True,
        timeout=10,
        env=_script_env(),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "--agencies" in result.stderr


def test_missing_prerequisite_exits_77() -> None:
    """Without a usable `ip` (or without root) the script exits 77 with a one-line reason."""
    result = subprocess.run(
        [_bash(), str(SCRIPT), "--lottery", str(LOTTERY)],
        capture_output=True,
        text=True,
        timeout=10,
        env=_script_env(NETNS_ROUND_IP="/nonexistent/ip"),
    )
    assert result.returncode == EXIT_SKIP, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "skipped" in result.stderr


@pytest.mark.e2e
def test_round_across_namespaces(tmp_path: Path) -> None:
    """A round with each process in its own namespace gets the generated winners, leaves none."""
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    ip = shutil.which("ip")
    assert ip is not None
    cmd = [
        _bash(), str(SCRIPT), "--agencies", "3", "--bets", "200",
        "--lottery", str(LOTTERY), "--keep-logs", str(tmp_path / "logs"),
    ]  # fmt: skip
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_script_env()
    ) as proc:
        prefix = f"lotns{proc.pid}-"  # bash runs the script itself: its $$ is this pid
        try:
            out, err = proc.communicate(timeout=SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the script's trap cleans up
            out, err = proc.communicate(timeout=30 * UNIT)
            pytest.fail(f"netns_round.sh took over {SCRIPT_TIMEOUT} s:\n{out}\n{err}")
    leftovers = [ns for ns in _namespaces(ip) if ns.startswith(prefix)]
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    assert "PASS" in out, out
    assert prefix in out, out  # the summary names this run's namespaces
    assert len(re.findall(r"\bexit 0\b", out)) == 4, out  # the server and 3 agencies
    assert leftovers == [], f"namespaces left behind: {leftovers}"
    assert (tmp_path / "logs" / "server.log").exists()
