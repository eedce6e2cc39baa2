import sys

from gcalloc.cli import main

sys.exit(main())
