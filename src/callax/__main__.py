"""``python -m callax``: the ``callax`` command line (see [`callax.cli`][])."""

import sys

from .cli import main

sys.exit(main())
