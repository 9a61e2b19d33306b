"""``python -m lbserver``: same as the ``lbserver`` command."""

import sys

from lbserver.cli import main

sys.exit(main())
