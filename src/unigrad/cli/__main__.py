"""``python -m unigrad.cli`` runs the command line, as ``python -m unigrad`` does."""

import sys

from unigrad.cli import main

sys.exit(main())
