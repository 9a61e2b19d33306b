"""``python3 -m lbclient``: the same as the ``lbclient`` command."""

import sys

from lbclient.client import main

sys.exit(main())
