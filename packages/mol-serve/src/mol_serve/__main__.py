"""``python -m mol_serve``: the ``mol-serve`` CLI."""

import sys

from mol_serve.cli import main

sys.exit(main())
