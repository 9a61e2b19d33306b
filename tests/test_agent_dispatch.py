"""XML-RPC dispatch and safe request parsing, without sockets."""

import xmlrpc.client

import pytest
from defusedxml import DTDForbidden

from lbagent.rpc import GET_STATE_CALL, Dispatcher, plain_get_state, safe_loads
from lbagent.sampler import make_sample

pytestmark = pytest.mark.unit

BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<methodCall><methodName>&lol2;</methodName></methodCall>"""


def call(dispatcher, method, *params):
    body = xmlrpc.client.dumps(params, method).encode()
    return xmlrpc.client.loads(dispatcher._marshaled_dispatch(body))[0][0]


@pytest.fixture
def sample_box():
    return {"sample": make_sample("app1", 1700000000.25, {"NBPROC": 4, "ROOM": "B12", "GDM": True},
                                  ["bob", "alice"])}


@pytest.fixture
def dispatcher(sample_box):
    return Dispatcher(lambda: sample_box["sample"])


def test_get_state_reply(dispatcher):
    state = call(dispatcher, "get_state")
    assert state["hostname"] == "app1"
    assert state["sampled_at"] == 1700000000.25
    assert state["variables"] == {"NBPROC": 4, "ROOM": "B12", "GDM": True}
    assert state["users"] == ["bob", "alice"]
    assert state["agent_version"]


def test_reply_follows_the_current_sample(dispatcher, sample_box):
    assert call(dispatcher, "get_state")["variables"]["NBPROC"] == 4
    sample_box["sample"] = make_sample("app1", 1700000005.0, {"NBPROC": 8}, [])
    assert call(dispatcher, "get_state")["variables"] == {"NBPROC": 8}


def test_the_balancers_call_and_any_other_spelling_get_the_same_answer(dispatcher, sample_box):
    assert GET_STATE_CALL == xmlrpc.client.dumps((), "get_state").encode()  # what lbserver sends
    spelled = b"<?xml version='1.0'?><methodCall> <methodName>get_state</methodName><params/></methodCall>"
    assert dispatcher._marshaled_dispatch(GET_STATE_CALL) == dispatcher._marshaled_dispatch(spelled)
    sample_box["sample"] = None  # before the first sample: a fault, by either path
    for body in (GET_STATE_CALL, spelled):
        with pytest.raises(xmlrpc.client.Fault, match="no sample"):
            xmlrpc.client.loads(dispatcher._marshaled_dispatch(body))


def plain(head: bytes, body: bytes = GET_STATE_CALL) -> bytes:
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize("request_bytes", [
    plain(b"POST /RPC2 HTTP/1.0\r\nHost: 10.0.0.1:8001\r\nUser-Agent: lbserver\r\nContent-Type: text/xml\r\n"),
    plain(b"POST / HTTP/1.1\r\nHost: app1\r\nAccept-Encoding: gzip\r\nContent-Type: text/xml\r\n"
          b"User-Agent: Python-xmlrpc/3.11\r\n"),
    plain(b"POST /RPC2 HTTP/1.0\r\nconnection: close\r\n"),
])
def test_plain_get_state_calls(request_bytes):
    assert plain_get_state(request_bytes)


@pytest.mark.parametrize("request_bytes", [
    plain(b"POST /RPC2 HTTP/1.0\r\nAuthorization: Basic bGJzZXJ2ZXI6eA==\r\n"),  # credentials: checked by the handler
    plain(b"POST /RPC2 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n"),
    plain(b"POST /RPC2 HTTP/1.0\r\nExpect: 100-continue\r\n"),
    plain(b"POST /other HTTP/1.0\r\n"),
    plain(b"POST /RPC2?x=1 HTTP/1.0\r\n"),
    plain(b"GET /RPC2 HTTP/1.0\r\n"),
    plain(b"POST /RPC2 HTTP/2.0\r\n"),
    plain(b"POST /RPC2 HTTP/1.0\r\n", xmlrpc.client.dumps((), "ping").encode()),
    plain(b"POST /RPC2 HTTP/1.0\r\n")[:-5],  # the body not whole yet
    plain(b"POST /RPC2 HTTP/1.0\r\n") + b"POST",  # something after it
    b"POST /RPC2 HTTP/1.0\r\nContent-Length: 7\r\n\r\n" + GET_STATE_CALL,
    b"POST /RPC2 HTTP/1.0\r\n\r\n" + GET_STATE_CALL,  # no Content-Length
    b"POST /RPC2 HTTP/1.0\r\nContent-Length " + b"\r\n\r\n" + GET_STATE_CALL,
])
def test_not_plain_get_state_calls(request_bytes):
    assert not plain_get_state(request_bytes)


def test_ping_and_introspection(dispatcher):
    assert call(dispatcher, "ping") is True
    assert set(call(dispatcher, "system.listMethods")) >= {"get_state", "ping", "system.listMethods"}
    assert "hostname" in call(dispatcher, "system.methodHelp", "get_state")


def test_bad_requests_become_faults(dispatcher):
    for body in (b"<methodCall><methodName>ping", b"not xml at all", BOMB,
                 xmlrpc.client.dumps((), "no_such_method").encode(),
                 xmlrpc.client.dumps((1,), "get_state").encode()):
        with pytest.raises(xmlrpc.client.Fault):
            xmlrpc.client.loads(dispatcher._marshaled_dispatch(body))


def test_no_sample_yet_is_a_fault():
    with pytest.raises(xmlrpc.client.Fault, match="no sample"):
        call(Dispatcher(lambda: None), "get_state")


def test_safe_loads_refuses_doctype_and_entities():
    with pytest.raises(DTDForbidden):
        safe_loads(BOMB)
    assert safe_loads(xmlrpc.client.dumps((1, "a"), "m").encode()) == ((1, "a"), "m")
