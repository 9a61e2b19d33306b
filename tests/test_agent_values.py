"""Value parsing of custom variables (pure, no processes or sockets)."""

import pytest

from lbagent.values import MAX_STRING, BadValue, first_line, parse_output, parse_value

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text,expected", [
    ("42", 42),
    ("  -7 ", -7),
    ("+3", 3),
    ("0", 0),
    ("3.25", 3.25),
    ("1e3", 1000.0),
    (".5", 0.5),
    ("true", True),
    ("FALSE", False),
    ("True", True),
    ("room 12", "room 12"),
    ("x" * MAX_STRING, "x" * MAX_STRING),
    ("été", "été"),
    ("nan", "nan"),  # words stay words, never a non-finite number
])
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_int_beyond_xmlrpc_range_becomes_float():
    value = parse_value(str(2 ** 40))
    assert isinstance(value, float) and value == 2.0 ** 40
    assert parse_value(str(2 ** 31 - 1)) == 2 ** 31 - 1


@pytest.mark.parametrize("text", ["", "   ", "1e999", "-1e999", "a\x01b", "x" * (MAX_STRING + 1), "a\x1b[31m"])
def test_parse_value_rejects(text):
    with pytest.raises(BadValue):
        parse_value(text)


def test_first_line_only_counts():
    assert parse_output(b"17\nmore\n") == 17
    assert parse_output(b"  true \r\n") is True
    assert first_line(b"a b\nc") == "a b"


def test_output_not_utf8_is_rejected():
    with pytest.raises(BadValue, match="UTF-8"):
        parse_output(b"\xff\xfe\x00garbage")


def test_empty_output_is_rejected():
    with pytest.raises(BadValue):
        parse_output(b"\n17\n")
