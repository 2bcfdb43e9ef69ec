"""``python -m fuse4seg`` runs the command line (fuse4seg.entry, as the installed ``fuse4seg`` script does)."""

import sys

from fuse4seg.entry import main

sys.exit(main())
