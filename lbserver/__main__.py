"""``python -m lbserver``: same as the ``lbserver`` command."""

import sys

from lbserver.main import main

sys.exit(main())
