"""capacity and critical expressions: the parser on any input, and their values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbserver.config.expr import Const, EvalError, ExprError, evaluate, parse

pytestmark = pytest.mark.unit

VARS = {"CPUFREQ": 2000, "NBPROC": 4, "MEMTOTAL": 8192, "NBX11SESS": 12, "TEXT": "busy", "FLAG": True}


@pytest.mark.parametrize("text, value", [
    (".7", 0.7), ("40", 40.0), ("1.5", 1.5), ("2+3*4", 14.0), ("(2+3)*4", 20.0), ("-3+5", 2.0), ("--3", 3.0),
    ("10/4", 2.5), ("8-2-1", 5.0), ("16/4/2", 2.0),
    ("$CPUFREQ*$CPUCOUNT*$CPUCOUNT/120", 2000 * 4 * 4 / 120), ("$CPUFREQ*$CPUCOUNT*$CPUCOUNT/100", 320.0),
    ("$MEMTOTAL-100", 8092.0), (" $NBX11SESS * 2 ", 24.0), ("$nbx", None),
])
def test_values(text, value):
    tree = parse(text)
    if value is None:
        with pytest.raises(EvalError):
            evaluate(tree, VARS)
    else:
        assert evaluate(tree, VARS) == pytest.approx(value)


def test_constants_are_folded_and_names_collected():
    assert parse("(1+2)*3") == Const(9.0)
    assert parse("$CPUFREQ*$CPUCOUNT/2").names() == {"CPUFREQ", "NBPROC"}
    assert parse("5").constant == 5.0 and parse("$X").constant is None


@pytest.mark.parametrize("text, column", [
    ("", 1), ("2 +", 4), ("abc", 1), ("((1)", 5), ("3 3", 3), ("1/0", 2), ("$", 1), ("2 ** 3", 4),
    ("$A $B", 4), (")", 1), ("4*", 3), ("1e5", 2), ("(" * 60 + "1" + ")" * 60, 51),
])
def test_syntax_errors_name_the_column(text, column):
    with pytest.raises(ExprError) as info:
        parse(text)
    assert info.value.column == column


@pytest.mark.parametrize("text", ["$TEXT", "$FLAG", "$MISSING*2", "1/($NBPROC-4)"])
def test_no_value_for_this_node(text):
    with pytest.raises(EvalError):
        evaluate(parse(text), VARS)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789.+-*/() $ABCX_e\t")), max_size=60))
def test_any_input_gives_a_tree_or_a_located_error(text):
    try:
        tree = parse(text)
    except ExprError as exc:
        assert 1 <= exc.column <= len(text) + 1
        return
    try:
        value = evaluate(tree, {"A": 1.5, "B": -2, "C": 0})
    except EvalError:
        return
    assert value == value  # never NaN


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.integers(0, 99).map(str) | st.sampled_from(["$A", "$B"]),
                    lambda inner: st.tuples(inner, st.sampled_from("+-*"), inner).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
                    max_leaves=12))
def test_well_formed_expressions_compute_like_python(text):
    env = {"A": 3, "B": 7}
    assert evaluate(parse(text), env) == pytest.approx(eval(text.replace("$", ""), {}, env))  # noqa: S307 (test oracle)
