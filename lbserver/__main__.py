"""``python -m lbserver``: same as the ``lbserver`` command."""

import sys

from lbserver.entry import main

sys.exit(main())
