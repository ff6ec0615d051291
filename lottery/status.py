"""``lottery status``: the round's state as a table, for people.

`render` turns the server's STATUS JSON (see docs/PROTOCOL.md) into a table:
one row per agency with its committed bets, whether it is connected and
whether it is done (and, when several servers share the round, which server
it is connected to), then the draw's state. With `rich` installed (the ``ui``
extra) the table is drawn by rich; without it, as plain aligned text.

A server with secrets answers a peer that is no agency and brings no
operator token with the round's summary only (no ``agency`` list, an
``agencies_done`` count): then there is no table, only the summary line.
"""

from __future__ import annotations

import io
from typing import Any, TextIO

__all__ = ["draw_lines", "render", "summary"]


def summary(status: dict[str, Any]) -> str:
    """One line about the draw: made, waiting for whom, or not yet open."""
    if status["drawn"]:
        seconds = status.get("draw_seconds")
        took = f" in {seconds * 1000:.1f} ms" if isinstance(seconds, float) else ""
        return f"draw: made{took}"
    if "agency" not in status:  # the summary view
        done = status["agencies_done"]
        if done < status["agencies"]:
            return f"draw: waiting for {status['agencies'] - done} of {status['agencies']} agencies"
        return "draw: every agency is done; drawing"
    missing = [a["id"] for a in status["agency"] if not a["done"]]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        return f"draw: waiting for {len(missing)} of {status['agencies']} agencies ({shown})"
    return "draw: every agency is done; drawing"


def draw_lines(status: dict[str, Any]) -> list[str]:
    """A random draw's public values (docs/DRAW.md): commitment, then seed and reveals."""
    if status.get("draw_mode") != "random":
        return []
    agencies = status.get("agency", [])
    committed = [str(a["id"]) for a in agencies if a.get("committed")]
    revealed = [str(a["id"]) for a in agencies if a.get("revealed")]
    lines = [
        f"random draw: server commitment {status.get('commitment')}",
        f"committed: {' '.join(committed) or '-'}; revealed: {' '.join(revealed) or '-'}",
    ]
    if "seed" in status:
        missing = " ".join(map(str, status.get("not_revealed", []))) or "-"
        number, seed = status.get("number"), status["seed"]
        lines.append(f"number {number}; seed {seed}; not revealed: {missing}")
        lines += [f"  nonce of agency {a}: {n}" for a, n in status.get("reveals", {}).items()]
    return lines


def _shared(status: dict[str, Any]) -> bool:
    """Whether the round is several servers' (docs/SCALING.md): each agency shows its server."""
    return "server_id" in status


def _rows(status: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        (
            str(a["id"]),
            f"{a['committed_bets']:,}",
            "yes" if a["connected"] else "no",
            "yes" if a["done"] else "no",
        )
        for a in status["agency"]
    ]
    if _shared(status):
        rows = [
            (*row, a.get("server") or "-") for row, a in zip(rows, status["agency"], strict=True)
        ]
    return rows


HEADERS = ("agency", "committed bets", "connected", "done")


def _headers(status: dict[str, Any]) -> tuple[str, ...]:
    return (*HEADERS, "server") if _shared(status) else HEADERS


def _title(status: dict[str, Any]) -> str:
    title = f"round {status.get('round', '?')}: {status['agencies']} agencies"
    if _shared(status):
        title += f" (asked of server {status['server_id']})"
    return title


def _plain(status: dict[str, Any]) -> str:
    headers = _headers(status)
    rows = [headers, *_rows(status)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([_title(status), "", *lines, "", summary(status), *draw_lines(status)]) + "\n"


def render(status: dict[str, Any], out: TextIO, *, use_rich: bool | None = None) -> None:
    """Write the status table to ``out`` (rich when available, unless told not to)."""
    if "agency" not in status:  # the summary view: no per-agency rows to show
        out.write(f"lottery round: {status['agencies']} agencies\n{summary(status)}\n")
        return
    if use_rich is not False:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            if use_rich:
                raise
        else:
            table = Table(title=f"lottery {_title(status)}")
            for header in _headers(status):
                table.add_column(header, justify="right")
            for row in _rows(status):
                table.add_row(*row)
            console = Console(file=out, force_terminal=None if out.isatty() else False)
            console.print(table)
            console.print(summary(status))
            for line in draw_lines(status):
                console.print(line, highlight=False)
            return
    out.write(_plain(status))


def render_text(status: dict[str, Any]) -> str:
    """The plain-text table (what `render` writes without rich)."""
    buffer = io.StringIO()
    render(status, buffer, use_rich=False)
    return buffer.getvalue()
