"""``python -m lottery``: the same as the ``lottery`` command."""

from .cli import run

run()
