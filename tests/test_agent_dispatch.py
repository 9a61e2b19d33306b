"""XML-RPC dispatch and safe request parsing, without sockets."""

import xmlrpc.client

import pytest
from defusedxml import DTDForbidden

from lbagent.rpc import GET_STATE_CALL, Dispatcher, safe_loads
from lbagent.sampler import make_sample

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
