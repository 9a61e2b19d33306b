# mille-xterm load balancer
#   make demo      set up and run the loopback demo (agents + balancer + terminals)
#   make test      set up everything the tests need, then run them

PYTHON ?= python3

.PHONY: demo test bench clean

demo:
	scripts/bootstrap
	.venv/bin/python -m lbserver.demo

test:
	scripts/bootstrap --test
	.venv/bin/python -m pytest -q

clean:
	rm -rf .venv build dist *.egg-info tests/artifacts .pytest_cache
