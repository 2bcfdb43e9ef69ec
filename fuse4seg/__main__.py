"""``python -m fuse4seg`` runs the command line."""

import sys

from fuse4seg.cli import main

sys.exit(main())
