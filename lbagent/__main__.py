"""``python -m lbagent``: the same as the ``lbagent`` command."""

import sys

from lbagent.entry import main

sys.exit(main())
