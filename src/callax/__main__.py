"""``python -m callax``: the ``callax`` command line (see [`callax.cli`][]).

``callax/__init__.py`` installs the command's Ctrl-C handler before it imports JAX
(``callax._entry``)."""

import sys

from ._entry import main

sys.exit(main())
