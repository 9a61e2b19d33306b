"""``python -m lbagent``: the same as the ``lbagent`` command."""

import sys

from lbagent.main import main

sys.exit(main())
