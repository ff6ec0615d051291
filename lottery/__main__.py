"""``python -m lottery``: the same as the ``lottery`` command."""

import sys

from .cli import main

sys.exit(main())
