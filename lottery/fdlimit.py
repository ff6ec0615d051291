"""Open-file limit: the server takes all the descriptors the system lets it.

Entry point: `raise_nofile_limit()`, called once when ``lottery server``
starts. Each connection is a descriptor; a soft limit of 1,024 (a common
default) is below the server's own connection limit, and past it accept()
fails with nothing said to the peer. The server then sizes its connection
limit to what the soft limit allows (`lottery.server.Server`), and logs both.
"""

from __future__ import annotations

import resource

__all__ = ["raise_nofile_limit"]


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. macOS refuses RLIM_INFINITY
            return soft, hard
    return resource.getrlimit(resource.RLIMIT_NOFILE)
