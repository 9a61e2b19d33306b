"""lbclient: the terminal-side client that asks the balancers where to log in.

Standard library only. The command is :mod:`lbclient.client`, a single file
that also runs when copied alone (``python3 client.py``); this package only
adds ``python3 -m lbclient``.
"""
