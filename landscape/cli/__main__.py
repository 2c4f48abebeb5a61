"""``python -m landscape.cli``: the ``rtt`` command line."""

import sys

from landscape.cli import main

sys.exit(main())
