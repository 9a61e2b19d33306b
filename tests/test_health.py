"""Poll records: reply validation and up/down hysteresis."""

from __future__ import annotations

import pytest

from lbserver.core.health import MAX_STRING, MAX_USERS, MAX_VARIABLES, NodeRecord, record_failure, record_success, \
    validate_state

pytestmark = pytest.mark.unit

STATE = {"hostname": "xapp1", "agent_version": "1.0", "sampled_at": 1700000000.5,
         "variables": {"NBPROC": 4, "LOADAVG": 0.5, "GDM": True, "ROOM": "B12"}, "users": ["alice"]}


def run(rec: NodeRecord, seq: str, rise: int = 2, fall: int = 3) -> list[str | None]:
    """Apply a sequence of 'o' (success) and 'x' (failure) polls; return the transitions."""
    out = []
    for i, c in enumerate(seq):
        if c == "o":
            out.append(record_success(rec, STATE, float(i), rise))
        else:
            out.append(record_failure(rec, f"timeout {i}", float(i), fall))
    return out


def test_first_success_is_up_at_once():
    rec = NodeRecord("a")
    assert rec.up is None
    assert run(rec, "o") == ["up"]
    assert rec.up is True and rec.last_state == STATE and rec.last_success == 0.0 and rec.last_change == 0.0


def test_first_failure_is_down_at_once():
    rec = NodeRecord("a")
    assert run(rec, "x") == ["down"]
    assert rec.up is False and rec.last_error == "timeout 0" and rec.last_state is None


def test_goes_down_after_fall_failures_in_a_row():
    rec = NodeRecord("a")
    assert run(rec, "oxxoxxx", fall=3) == ["up", None, None, None, None, None, "down"]
    assert rec.up is False and rec.consecutive_failed == 3 and rec.last_change == 6.0


def test_comes_back_after_rise_successes_in_a_row():
    rec = NodeRecord("a")
    assert run(rec, "xoxooo", rise=3) == ["down", None, None, None, None, "up"]
    assert rec.up is True and rec.consecutive_ok == 3 and rec.last_error is None


def test_failure_keeps_last_state_and_error():
    rec = NodeRecord("a")
    run(rec, "oxx", fall=2)
    assert rec.up is False
    assert rec.last_state == STATE and rec.last_success == 0.0 and rec.last_error == "timeout 2"


def test_rise_one_fall_one_flips_every_time():
    rec = NodeRecord("a")
    assert run(rec, "oxox", rise=1, fall=1) == ["up", "down", "up", "down"]


def test_validate_accepts_contract_shape():
    state = validate_state(dict(STATE))
    assert state == {**STATE, "sessions": None, "sessions_error": None}  # an agent sending no sessions
    assert state["variables"] is not STATE["variables"]  # a copy: the agent's object is not kept


def test_validate_fills_missing_agent_version_and_drops_unknown_keys():
    reply = {k: v for k, v in STATE.items() if k != "agent_version"}
    reply["extra"] = object()
    state = validate_state(reply)
    assert state["agent_version"] == "" and "extra" not in state


@pytest.mark.parametrize("mutate, message", [
    (lambda r: "not a dict", "expected a struct"),
    (lambda r: {k: v for k, v in r.items() if k != "users"}, "missing 'users'"),
    (lambda r: {**r, "hostname": 5}, "hostname: expected a string"),
    (lambda r: {**r, "sampled_at": "now"}, "sampled_at: expected a number"),
    (lambda r: {**r, "sampled_at": True}, "sampled_at: expected a number"),
    (lambda r: {**r, "variables": []}, "variables: expected a struct"),
    (lambda r: {**r, "variables": {"X": [1]}}, "variable X: expected int, float, bool or string"),
    (lambda r: {**r, "variables": {"X": float("nan")}}, "variable X: not a finite number"),
    (lambda r: {**r, "variables": {"X": "y" * (MAX_STRING + 1)}}, "variable X: string of"),
    (lambda r: {**r, "variables": {f"V{i}": i for i in range(MAX_VARIABLES + 1)}}, "at most 1000"),
    (lambda r: {**r, "users": "alice"}, "users: expected an array"),
    (lambda r: {**r, "users": ["ok", 3]}, "users[1]: expected a string"),
    (lambda r: {**r, "users": ["u"] * (MAX_USERS + 1)}, "at most 10000"),
])
def test_validate_rejects_with_specific_message(mutate, message):
    with pytest.raises(ValueError) as exc:
        validate_state(mutate(dict(STATE)))
    assert message in str(exc.value)
