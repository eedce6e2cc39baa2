"""``python -m gcalloc``: the same command line as the ``gcalloc`` console script."""

import sys

from gcalloc.cli import main

sys.exit(main())
