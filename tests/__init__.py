"""The tests of mille-xterm: unit tests, and the real daemons on loopback (see docs/development.md, Tests)."""
