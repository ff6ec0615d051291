"""Starting a new round: the old one is archived, never deleted.

``lottery server --new-round`` moves the data directory's round (its
``lottery.db`` and SQLite's side files) into ``archive/<round id>/`` inside
the same directory, under the directory's lock, so the new round starts empty
and the old one can still be exported (``lottery export --data-dir
DIR/archive/<id>``). ``--new-round-if-finished`` does so only when the old
round's draw is made, so a server restarted mid-round resumes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .lock import DataDirLock
from .sqlite import DB_FILENAME, SQLiteStore

__all__ = ["ARCHIVE_DIRNAME", "archive_round"]

ARCHIVE_DIRNAME = "archive"
_SIDE_FILES = ("-wal", "-shm")


def archive_round(data_dir: str | os.PathLike[str], *, only_if_finished: bool) -> Path | None:
    """Move the round in ``data_dir`` to its archive folder; the folder, or None if none moved.

    Raises:
        ConfigError: another server holds the directory, or its store is not ours.
    """
    data = Path(data_dir)
    if not (data / DB_FILENAME).exists():
        return None
    lock = DataDirLock(data)
    lock.acquire()
    try:
        store = SQLiteStore(data)
        try:
            round_id, drawn = store.round_id, store.drawn()
        finally:
            store.close()  # the last connection checkpoints the WAL into the file
        if only_if_finished and not drawn:
            return None
        folder = data / ARCHIVE_DIRNAME / round_id
        folder.mkdir(parents=True, exist_ok=False)
        for suffix in ("", *_SIDE_FILES):
            source = data / (DB_FILENAME + suffix)
            if source.exists():
                source.rename(folder / source.name)
        return folder
    finally:
        lock.release()
