"""The reply fast path against the reference parser: the same value, or it steps aside."""

from __future__ import annotations

import re
import xmlrpc.client

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbserver.core import rpcreply
from lbserver.core.poller import loads_body  # importing it guards xmlrpc.client as the poller does

pytestmark = pytest.mark.unit


PLAIN_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="<>&"), max_size=12)
ANY_TEXT = st.text(max_size=12)  # controls, CR, markup characters, non-ASCII: the reference's to judge
SCALARS = st.one_of(st.integers(-2**31, 2**31 - 1), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                    PLAIN_TEXT, ANY_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.one_of(PLAIN_TEXT, ANY_TEXT), inner,
                                                                       max_size=4)), max_leaves=12)


def reference(body: bytes) -> object:
    (value,), _ = xmlrpc.client.loads(body)
    return value


def same_or_aside(body: bytes) -> bool:
    """The fast path's value equals the reference's, or it raised NotPlain; True when it answered."""
    try:
        fast = rpcreply.loads(body)
    except rpcreply.NotPlain:
        return False
    assert fast == reference(body)
    return True


def test_a_real_agent_reply_is_read_by_the_fast_path():
    state = {"hostname": "xapp1", "agent_version": "0.1.0", "sampled_at": 1796057254.532,
             "variables": {"NBPROC": 2, "LOADAVG": 0.52, "DRAINED": False, "DRAIN_REASON": ""}, "users": ["ann", "bob"]}
    body = xmlrpc.client.dumps((state,), methodresponse=True).encode()
    assert rpcreply.loads(body) == state == reference(body)


@settings(max_examples=300, deadline=None)
@given(value=VALUES)
def test_marshalled_values_read_the_same(value):
    body = xmlrpc.client.dumps((value,), methodresponse=True).encode()
    answered = same_or_aside(body)
    if body.isascii() and not re.search(rb"[&\r\x00-\x08\x0b\x0c\x0e-\x1f]", body):
        assert answered  # the plain subset is never left to the slow path


@settings(max_examples=300, deadline=None)
@given(value=VALUES, cut=st.integers(0, 10_000), junk=st.sampled_from(
    [b" ", b"x", b"<", b">", b"&amp;", b"<!-- c -->", b"<![CDATA[x]]>", b"\r", b"\x01", b"<nil/>", b"<value>",
     b"</value>", b"<i4>1</i4>", b"<?pi x?>", b"<!DOCTYPE x>", b'<value a="1">', b"\xc3\xa9"]))
def test_damaged_replies_read_the_same_or_go_to_the_reference(value, cut, junk):
    body = xmlrpc.client.dumps((value,), methodresponse=True).encode()
    cut %= len(body) + 1
    damaged = body[:cut] + junk + body[cut:]
    try:
        expected = reference(damaged)
    except Exception:  # noqa: BLE001 (the reference refuses it: the fast path must not accept it)
        with pytest.raises(rpcreply.NotPlain):
            rpcreply.loads(damaged)
        return
    same_or_aside(damaged)
    assert loads_body(damaged) == expected


@pytest.mark.parametrize("body", [
    b"<methodResponse><params><param><value><boolean> 1 </boolean></value></param></params></methodResponse>",
    b"<methodResponse><params><param><value>a &lt; b</value></param></params></methodResponse>",
    b"<methodResponse><fault><value><struct></struct></value></fault></methodResponse>",
    b"<methodResponse><params><param><value><int>1</int></value></param><param><value>2</value></param>"
    b"</params></methodResponse>",
    b"<methodResponse><params><param><value><struct><member><name>a</name><value><int>1</int></value>"
    b"</member></struct></value></param></params>",
    b"<?xml version='1.0' standalone='yes'?><methodResponse/>",
])
def test_what_the_fast_path_leaves_to_the_reference(body):
    with pytest.raises(rpcreply.NotPlain):
        rpcreply.loads(body)
