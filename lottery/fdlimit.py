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


def raise_nofile_limit(wanted: int = 0) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; returns (soft, hard) after.

    With ``wanted`` above the hard limit, the hard limit is raised to it too
    where the process may (root, or CAP_SYS_RESOURCE): 10,000 agencies with
    room for a reconnect of each want about 21,000 descriptors, more than a
    common hard limit of 20,000 or less. Elsewhere the soft limit stops at the
    hard one and the server fits its connection limit to that.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if wanted and hard != infinite and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ValueError, OSError):  # not allowed: the hard limit stays
            pass
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. macOS refuses RLIM_INFINITY
            return soft, hard
    return resource.getrlimit(resource.RLIMIT_NOFILE)
