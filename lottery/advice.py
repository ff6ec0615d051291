"""Start-up advice: settings that will not do what the operator asked.

Each function returns plain sentences, or nothing; the command logs them once
as warnings after logging is set up (`log_advice`). Nothing here stops a
command: a wrong value is a `ConfigError` in lottery/config.py instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .log import get_logger
from .protocol import BATCH_OVERHEAD, MAX_FRAME_SIZE

__all__ = ["batch_cap_advice", "log_advice"]

#: How much of an agency file `batch_cap_advice` reads to size its bets.
SAMPLE_BYTES = 64 * 1024
#: A batch cut by the frame to below this share of --batch-max-amount is worth a word.
NOTICEABLE = 0.9


def batch_cap_advice(path: str | os.PathLike[str], batch_max_amount: int) -> list[str]:
    """A sentence if the 8 KiB frame, not ``batch_max_amount``, will size the batches.

    The bets per frame are estimated from the first lines of ``path`` (a
    record takes about as many bytes as its CSV line). Blocking file I/O,
    done once at start.
    """
    try:
        with open(path, "rb") as file:
            sample = file.read(SAMPLE_BYTES)
    except (OSError, ValueError):
        return []  # the sender reports an unreadable file properly
    lines = [line for line in sample.split(b"\n")[:-1] if line.strip()] or [sample]
    mean = max(1.0, sum(len(line) + 1 for line in lines) / len(lines))
    fits = max(1, int((MAX_FRAME_SIZE - BATCH_OVERHEAD) // mean))
    if fits >= batch_max_amount * NOTICEABLE:
        return []
    return [
        f"--batch-max-amount {batch_max_amount}: a batch also ends at the "
        f"{MAX_FRAME_SIZE // 1024} KiB frame, which holds about {fits} bets of {path}, "
        f"so batches carry about {fits}"
    ]


def log_advice(sentences: Iterable[str], **context: object) -> None:
    """Log each sentence once, as a tp0 line ``action: config | result: warning | detalle: ...``."""
    log = get_logger(**context)
    for sentence in sentences:
        log.warning("config", result="warning", detalle=sentence)
