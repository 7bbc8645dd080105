"""``python -m e4t.cli``: the ``e4t`` command."""

import sys

from e4t.cli import main

sys.exit(main())
