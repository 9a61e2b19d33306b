"""Agentless nodes, in-process: node_exporter pages to variables, Prometheus answers to nodes, the configuration."""

from __future__ import annotations

import json

import pytest

from lbserver import config as configmod
from lbserver.config import Group
from lbserver.core.agentless import exposition, promgroup
from lbserver.core.agentless.promapi import Sample, parse_vector
from lbserver.core.agentless.scrape import build_request
from lbserver.core.poller import PollError
from tests.support import ROOT

pytestmark = pytest.mark.unit

PAGE = (ROOT / "tests" / "support" / "node_exporter_page.txt").read_bytes()
"""A whole page of Debian 12's node_exporter 1.5 (every default collector)."""


def _value(page: bytes, name: str, where: str = "") -> float:
    for line in page.decode().splitlines():
        if line.startswith(name + (where and "{")) and where in line or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not on the page")


def test_a_real_page_gives_every_built_in_in_the_agents_units():
    state = exposition.state(PAGE, "n1", 12.0, {})
    v = state["variables"]
    assert set(v) == {"NBPROC", "CPUFREQ", "LOADAVG", "LOADAVG5", "LOADAVG15", "CPUUSED", "MEMTOTAL", "MEMUSED",
                      "MEMAVAIL", "MEMUSEDPCT", "SWAPUSEDPCT", "DISKUSEDPCT", "UPTIME", "DRAINED", "DRAIN_REASON"}
    total, avail = _value(PAGE, "node_memory_MemTotal_bytes"), _value(PAGE, "node_memory_MemAvailable_bytes")
    assert v["MEMTOTAL"] == int(total // 2**20) and v["MEMAVAIL"] == int(avail // 2**20)   # MiB, whole
    assert v["MEMUSED"] == int((total - avail) // 2**20)
    assert v["MEMUSEDPCT"] == round(100 * (total - avail) / total, 2)
    assert v["LOADAVG"] == round(_value(PAGE, "node_load1"), 2)
    assert v["NBPROC"] == PAGE.count(b'mode="idle"}')
    assert v["UPTIME"] == int(_value(PAGE, "node_time_seconds") - _value(PAGE, "node_boot_time_seconds"))
    assert v["DRAINED"] is False and v["DRAIN_REASON"] == ""
    assert state["sampled_at"] == 12.0 and state["users"] == [] and state["hostname"] == "n1"


def _page(idle: float, user: float, extra: str = "") -> bytes:
    return f"""# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{{cpu="0",mode="idle"}} {idle}
node_cpu_seconds_total{{cpu="0",mode="iowait"}} 0
node_cpu_seconds_total{{cpu="0",mode="user"}} {user}
node_cpu_seconds_total{{cpu="1",mode="idle"}} {idle}
node_cpu_seconds_total{{cpu="1",mode="user"}} {user}
node_load1 0.5
node_load5 0.25
node_load15 0.125
node_memory_MemTotal_bytes 4294967296
node_memory_MemAvailable_bytes 1073741824
node_memory_SwapTotal_bytes 1000
node_memory_SwapFree_bytes 750
node_filesystem_size_bytes{{device="/dev/vda",mountpoint="/"}} 1000
node_filesystem_free_bytes{{device="/dev/vda",mountpoint="/"}} 400
node_filesystem_avail_bytes{{device="/dev/vda",mountpoint="/"}} 300
node_filesystem_size_bytes{{device="/dev/vdb",mountpoint="/home"}} 9
node_cpu_frequency_max_hertz{{cpu="0"}} 3.2e+09
node_boot_time_seconds 1000
node_time_seconds 4600.7
{extra}""".encode()


def test_cpuused_is_measured_between_two_scrapes_as_the_agent_does():
    counters: exposition.CpuCounters = {}
    first = exposition.state(_page(idle=75, user=25), "n", 0, counters)["variables"]
    assert first["CPUUSED"] == 25.0                                  # since boot, on the first scrape
    second = exposition.state(_page(idle=85, user=55), "n", 0, counters)["variables"]
    assert second["CPUUSED"] == 75.0                                 # 60 busy of 80 since the first
    assert (first["NBPROC"], first["CPUFREQ"], first["MEMTOTAL"], first["MEMAVAIL"], first["MEMUSEDPCT"]) == \
           (2, 3200, 4096, 1024, 75.0)
    assert first["SWAPUSEDPCT"] == 25.0 and first["UPTIME"] == 3600
    assert first["DISKUSEDPCT"] == round(100 * 600 / 900, 2)         # as df: used / (used + available)


def test_the_textfile_collector_drains_and_counts_sessions():
    page = _page(1, 1, 'mille_xterm_drained{reason="kernel\\nupdate"} 1\nmille_xterm_nbsessions 7\n'
                       "mille_xterm_nbusers 3\n")
    v = exposition.state(page, "n", 0, {})["variables"]
    assert (v["DRAINED"], v["DRAIN_REASON"], v["NBSESSIONS"], v["NBUSERS"]) == (True, "kernel update", 7, 3)
    v = exposition.state(_page(1, 1, 'mille_xterm_drained{reason="x"} 0\n'), "n", 0, {})["variables"]
    assert v["DRAINED"] is False and "NBSESSIONS" not in v


@pytest.mark.parametrize("page, words", [
    (_page(1, 1).replace(b"node_load1 0.5\n", b""), "no node_load1 on the page (needed for LOADAVG"),
    (_page(1, 1).replace(b'mountpoint="/"}', b'mountpoint="/x"}'), 'node_filesystem_size_bytes{mountpoint="/"}'),
    (b"<html>not found</html>", "no node_cpu_seconds_total"),
    (b"node_load1 {{{\n", "malformed exposition text"),
    (b"node_load1 0.5\xff\xfe\n", "not UTF-8"),
    (_page(1, 1).replace(b"node_load1 0.5", b"node_load1 NaN"), "not a finite number"),
])
def test_a_bad_page_is_an_error_saying_what_is_wrong(page, words):
    with pytest.raises(exposition.ExpositionError, match=None) as info:
        exposition.state(page, "n", 0, {})
    assert words in str(info.value)


def test_lines_of_other_families_are_not_parsed():
    """A page of 100,000 lines of other metrics costs one regular expression pass, not the parser's time."""
    noise = b"".join(b"node_network_receive_bytes_total{device=\"eth%d\"} 1\n" % i for i in range(100000))
    found = exposition.samples(noise + _page(1, 1) + b"garbage {{{ that the parser would refuse\n")
    assert set(found) <= set(exposition.FAMILIES) and found["node_load1"] == [({}, 0.5)]


def test_a_scrape_asks_only_the_collectors_needed_unless_the_address_says():
    node = configmod.Node(name="n", address="http://127.0.0.1:9100/metrics", host="127.0.0.1", port=9100,
                          source="node-exporter")
    request = build_request(node).decode()
    assert request.startswith("GET /metrics?collect[]=cpu&collect[]=cpufreq&") and "collect[]=textfile" in request
    own = configmod.Node(name="n", address="http://127.0.0.1:9100/m?collect[]=loadavg", host="127.0.0.1", port=9100)
    assert build_request(own).decode().startswith("GET /m?collect[]=loadavg HTTP/1.0")


def _vector(*series, at=100.0) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [at, str(value)]} for labels, value in series]}}).encode()


def test_a_prometheus_answer_is_parsed_and_bounded():
    got = parse_vector(_vector(({"instance": "a:1"}, 2.5), ({"instance": "b:1"}, "NaN")), 10)
    assert got[0] == Sample({"instance": "a:1"}, 2.5, 100.0) and str(got[1].value) == "nan"
    assert parse_vector(_vector(({"instance": 7}, 1)), 10)[0].labels == {"instance": 7}   # checked where used
    with pytest.raises(PollError, match="gives 3 series \\(more than 2"):
        parse_vector(_vector(*[({"instance": str(i)}, 1) for i in range(3)]), 2)
    with pytest.raises(PollError, match="query failed: parse error"):
        parse_vector(b'{"status":"error","errorType":"bad_data","error":"parse error at char 3"}', 10)
    with pytest.raises(PollError, match="not JSON"):
        parse_vector(b"<html>", 10)
    with pytest.raises(PollError, match="matrix, not an instant vector"):
        parse_vector(b'{"status":"success","data":{"resultType":"matrix","result":[]}}', 10)


GROUP = Group(name="P", nodes=(), prometheus="http://127.0.0.1:9", discover="up", max_series=100)


def _answers(instance="a:9100", at=100.0, **values) -> dict:
    out = {}
    for name, q in promgroup.BUILTIN_QUERIES.items():
        if q.required or name in values:
            out[name] = promgroup._split([Sample({"instance": instance}, values.get(name, 1.0), at)], name)
    return out


def _group(stamp: float = 99.0, at: float = 100.0) -> promgroup.PrometheusGroup:
    group = promgroup.PrometheusGroup(GROUP, {"GPU": "max by (instance) (gpu)"}, 1.0, 2**20, fall_window=20.0)
    group.fresh = promgroup._split([Sample({"instance": "a:9100"}, stamp, at)], "")
    return group


def _state_of(group: promgroup.PrometheusGroup, answers: dict):
    return group._state("a", "a:9100", group._columns(answers), answers.get("DRAINED"))


def test_a_prometheus_node_gets_the_built_ins_and_a_stale_one_fails():
    group = _group()
    state, error = _state_of(group, _answers())
    assert error is None and state["variables"]["LOADAVG"] == 1.0 and state["variables"]["CPUFREQ"] == 0
    state, error = _state_of(group, _answers(MEMTOTAL=4096.0 * 2**20))
    assert state["variables"]["MEMTOTAL"] == 4096
    state, error = _state_of(_group(stamp=70.0), _answers())   # 30 s old, the window is 20
    assert state is None and error.startswith("stale sample:") and "30 s old" in error
    gpu = [Sample({"instance": "a:9100"}, 55.0, 100.0),
           Sample({"instance": "a:9100", promgroup.TIMESTAMP_LABEL: "1"}, 60.0, 100.0)]   # its own sample: 40 s
    state, error = _state_of(group, {**_answers(), "GPU": promgroup._split(gpu, "GPU")})
    assert state is None and error.startswith("stale sample: max by (instance) (gpu) for a:9100 is 40 s old")
    gpu[1] = gpu[1]._replace(value=95.0)
    state, error = _state_of(group, {**_answers(), "GPU": promgroup._split(gpu, "GPU")})
    assert error is None and state["variables"]["GPU"] == 55.0
    answers = _answers()
    del answers["LOADAVG"].values["a:9100"]
    state, error = _state_of(group, answers)
    assert state is None and error == "no sample of node_load1 for a:9100 in Prometheus (needed for LOADAVG)"


def test_prometheus_nodes_are_named_by_their_instance():
    assert promgroup.node_for("127.0.0.2:9100", None, None).name == "127.0.0.2"
    node = promgroup.node_for("[::1]:9100", None, 3)
    assert (node.name, node.host, node.port, node.source, node.max_sessions) == ("1", "::1", 9100, "prometheus", 3)
    assert promgroup.node_for("db-7.example.org:9100", "db7", None).name == "db7"
    with pytest.raises(ValueError):
        promgroup.node_for("host:notaport", None, None)


def test_a_promql_variable_carries_the_age_of_its_samples_and_the_built_ins_one_for_all():
    q = promgroup.PrometheusGroup(GROUP, {"GPU": "gpu_used"}, 1.0, 2**20, 20.0).queries["GPU"]
    assert promgroup.with_timestamp(q) == ('(gpu_used) or label_replace(min by (instance) '
                                           '(timestamp(gpu_used)), "lb_timestamp", "1", "__name__", ".*")')
    assert promgroup.with_timestamp(promgroup.BUILTIN_QUERIES["LOADAVG"]) == "max by (instance) (node_load1)"
    assert promgroup.FRESHNESS_QUERY == "min by (instance) (timestamp(node_load1))"


def _load(tmp_path, body: str):
    path = tmp_path / "l.xml"
    path.write_text(f"<lbsconfig>{body}</lbsconfig>")
    return configmod.load(str(path))


def test_the_configuration_of_agentless_nodes(tmp_path):
    token = tmp_path / "prom.token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    cfg = _load(tmp_path, f"""<nodes>
      <group name="A"><node name="ne" address="http://127.0.0.2/metrics" source="node-exporter"/></group>
      <group name="P" prometheus="http://127.0.0.1:9090/" discover='up{{job="node"}}' token-file="{token}">
        <node name="ag" address="http://127.0.0.3:8001"/><node instance="127.0.0.4:9100" name="four"/>
      </group></nodes>
      <variables><variable name="GPUUSED" promql="max by (instance) (gpu)"/></variables>""")
    assert cfg.nodes["ne"].port == 9100 and cfg.nodes["ne"].source == "node-exporter"
    assert cfg.nodes["ag"].source == "agent"
    p = cfg.groups["P"]
    assert (p.prometheus, p.discover, p.instances, p.nodes) == ("http://127.0.0.1:9090", 'up{job="node"}',
                                                                (("127.0.0.4:9100", "four"),), ("ag",))
    assert p.token == "s3cret" and "s3cret" not in repr(p)
    assert cfg.promql == {"GPUUSED": "max by (instance) (gpu)"}


@pytest.mark.parametrize("body, words", [
    ('<nodes><group name="P" prometheus="ftp://x"/></nodes>', "expected the base URL of a Prometheus server"),
    ('<nodes><group name="P" prometheus="http://127.0.0.1:9090"/></nodes>', "give it discover"),
    ('<nodes><group name="P" discover="up"><node name="a" address="http://h"/></group></nodes>',
     "discover needs prometheus"),
    ('<nodes><group name="P"><node instance="h:1"/></group></nodes>', "instance belongs in a group with prometheus"),
    ('<nodes><group name="P" prometheus="http://p:9090"><node instance="nohostport"/></group></nodes>',
     "expected the instance label, host:port"),
    ('<nodes><group name="P" prometheus="http://p:9090"><node name="x"/></group></nodes>',
     "missing attribute address (or instance"),
    ('<nodes><group name="A"><node name="n" address="http://h" source="snmp"/></group></nodes>', "source"),
    ('<nodes><group name="A"><node name="n" address="http://h"/></group></nodes>'
     '<variables><variable name="LOADAVG" promql="x"/></variables>', "is a built-in"),
    ('<nodes><group name="P" prometheus="http://p:9090" from="http://s:8009" discover="up"/></nodes>', "not both"),
])
def test_bad_agentless_configuration_is_refused_with_its_line(tmp_path, body, words):
    with pytest.raises(configmod.ConfigError, match=None) as info:
        _load(tmp_path, body)
    assert words in str(info.value) and ":1:" in str(info.value)


@pytest.mark.parametrize("nodes, attr", [
    ('<group name="P" prometheus="http://admin:s3cret@p:9090" discover="up"/>', "<group> attribute prometheus"),
    ('<group name="N"><node name="n1" address="http://admin:s3cret@127.0.0.1:9100/metrics" '
     'source="node-exporter"/></group>', "<node> attribute address"),
    ('<group name="A"><node name="n1" address="http://admin:s3cret@127.0.0.1:8001"/></group>',
     "<node> attribute address"),
    ('<group name="R" from="http://admin:s3cret@127.0.0.1:8009"/>', "<group> attribute from"),
])
def test_credentials_in_a_url_are_refused_and_never_repeated(tmp_path, nodes, attr):
    with pytest.raises(configmod.ConfigError) as info:
        _load(tmp_path, f"<nodes>{nodes}</nodes>")
    said = str(info.value)
    assert f"{attr} holds credentials" in said and "token-file" in said and ":1:" in said
    assert "s3cret" not in said and "admin" not in said


def test_the_fast_path_reads_every_plain_line_as_the_parser_does_and_leaves_the_rest_to_it():
    lines = "\n".join(l for l in PAGE.decode().splitlines() if not l.startswith("#"))
    assert exposition._plain(lines) == exposition.reference_samples(lines)   # the whole real page, every family
    for odd in ('node_load1{a="x\\"y"} 1', "node_load1 1 1700000000000", "node_load1  1", 'node_load1{a="b"c="d"} 1',
                "node_load1 1_0", "node_load1 Infinity"):
        assert exposition._plain(odd) is None, odd
    for plain in ("node_load1 -1.5e+09", 'node_load1{a="b",} NaN', "node_load1{} +Inf", 'x{a=""} 0'):
        assert repr(exposition._plain(plain)) == repr(exposition.reference_samples(plain)), plain  # NaN too
    escaped = 'node_load1 0.5\nmille_xterm_drained{reason="a \\"quoted\\" reason"} 1\n'
    assert exposition.samples(escaped.encode())[exposition.DRAIN_METRIC] == [({"reason": 'a "quoted" reason'}, 1.0)]


def test_the_line_filter_keeps_every_family_read_and_only_the_root_file_system():
    for family in exposition.FAMILIES:
        labels = '{device="/dev/vda",mountpoint="/"}' if "filesystem" in family else '{cpu="0"}'
        assert exposition._WANTED.fullmatch(f"\n{family}{labels} 1".encode()), family
        assert exposition._WANTED.fullmatch(f"\n{family} 1".encode()) or "filesystem" in family, family
        assert not exposition._WANTED.fullmatch(f"\n{family}_other 1".encode()), family
    assert not exposition._WANTED.fullmatch(b'\nnode_filesystem_size_bytes{mountpoint="/home"} 1')


def test_prometheus_credentials_go_in_the_authorization_header_only():
    from lbserver.core.agentless.promapi import Server
    bearer = Server("http://127.0.0.1:9090", "t0ken").request("up")[2].decode()
    assert "Authorization: Bearer t0ken\r\n" in bearer and bearer.startswith("GET /api/v1/query?query=up HTTP/1.0")
    basic = Server("https://prom/p", "pw", "lb").request("up")
    assert basic[:2] == ("prom", 443) and "Authorization: Basic bGI6cHc=\r\n" in basic[2].decode()
    assert "pw" not in repr(Server("http://p", "pw", "lb")) and "t0ken" not in repr(Server("http://p", "t0ken"))


def test_the_fast_path_for_prometheus_answers_reads_them_as_json_does():
    from lbserver.core.agentless import promapi

    def reference(body):
        doc = json.loads(body)
        return [(e["metric"], float(e["value"][1]), float(e["value"][0])) for e in doc["data"]["result"]]

    plain = [_vector(*[({"instance": f"10.0.0.{i}:9100"}, v) for i, v in enumerate((0.5, "NaN", "+Inf", "-1e-3", 7))]),
             _vector(), _vector(({"instance": "h\u00e9:1"}, 2)).replace(b"\\u00e9", "\u00e9".encode())]
    for body in plain:
        body = body.replace(b", ", b",").replace(b": ", b":")       # as Prometheus writes it: no blanks
        got = promapi.plain_by_instance(body, 100)
        expected = reference(body)
        assert got is not None and repr(got[0]) == repr({labels["instance"]: value for labels, value, _ in expected})
        assert all(at == got[1] for _, _, at in expected)
    for odd in (_vector(({"instance": "a", "job": "x"}, 1)), _vector(({"instance": 'a\\"b'}, 1)),
                b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"instance":"a"},'
                b'"value":[1,"1"]},]}}', b'{"status":"success","warnings":["x"],"data":{}}',
                _vector(({"instance": "a"}, 1), ({"instance": "a"}, 2)),                   # one instance twice
                _vector(({"instance": "a"}, 1), ({"instance": "b"}, 2)).replace(b"[100.0, \"2", b"[101.0, \"2")):
        assert promapi.plain_by_instance(odd.replace(b", ", b",").replace(b": ", b":"), 100) is None, odd
    with pytest.raises(PollError, match="more than 2"):
        promapi.plain_by_instance(plain[0].replace(b", ", b",").replace(b": ", b":"), 2)
    two = _vector(({"instance": "a"}, 1), ({"instance": "a"}, 2)).replace(b", ", b",").replace(b": ", b":")
    assert len(promapi.parse_vector(two, 10)) == 2                  # the reference path reads it, the group says why


def test_a_prometheus_state_has_the_shape_of_a_validated_agent_reply():
    from lbserver.core.health import validate_state
    state, error = _state_of(_group(), _answers())
    reply = {k: v for k, v in state.items() if not k.startswith("sessions")}   # an agent that sends no sessions
    assert error is None and validate_state(reply) == state


def test_rules_on_sessions_draw_a_warning_with_agentless_nodes(tmp_path, caplog):
    _load(tmp_path, '<nodes><group name="A"><node name="n" address="http://h/metrics" source="node-exporter"/>'
                    '</group></nodes>')
    assert "the default rules: warning: rule variable NBSESSIONS: node_exporter and Prometheus nodes report it only " \
           "where the site writes mille_xterm_nbsessions" in caplog.text
    caplog.clear()
    _load(tmp_path, '<nodes><group name="A"><node name="n" address="http://h"/></group></nodes>')
    assert "mille_xterm" not in caplog.text


def test_the_agentless_example_loads():
    cfg = configmod.load(str(ROOT / "etc" / "examples" / "lbsconfig-agentless.xml"))
    assert {n.source for n in cfg.nodes.values()} == {"agent", "node-exporter"}
    assert cfg.groups["HPC"].prometheus and cfg.promql == {"GPUUSED": "avg by (instance) (DCGM_FI_DEV_GPU_UTIL)"}


def test_a_group_makes_each_node_as_its_figures_one_by_one_would():
    """The states of a whole group (every figure there: made at once) are those :meth:`_state` makes node by node."""
    instances = [f"10.0.0.{i}:9100" for i in range(9)]
    nan, inf = float("nan"), float("inf")
    odd = {("LOADAVG", 1): None, ("MEMUSEDPCT", 2): nan, ("NBPROC", 3): nan, ("UPTIME", 4): -inf,
           ("NBUSERS", 5): nan, ("MEMTOTAL", 6): -3.0 * 2**20, ("CPUFREQ", 7): 2.4e9}   # None: no sample
    answers = {}
    for name, q in promgroup.BUILTIN_QUERIES.items():
        samples = [Sample({"instance": inst}, odd.get((name, i), 1.5 + i), 100.0) for i, inst in enumerate(instances)
                   if odd.get((name, i), 0.0) is not None and (q.required or name in ("NBUSERS", "CPUFREQ"))]
        answers[name] = promgroup._split(samples, name)
        if name != "LOADAVG5":   # converted as it arrived, or (LOADAVG5) when the nodes are made
            answers[name].converted = promgroup._column(q, answers[name].values)
    gpu = [Sample({"instance": inst}, 55.0, 100.0) for inst in instances]
    gpu.append(Sample({"instance": instances[8], promgroup.TIMESTAMP_LABEL: "1"}, 60.0, 100.0))  # 40 s old
    answers["GPU"] = promgroup._split(gpu, "GPU")
    answers["DRAINED"] = promgroup._split([Sample({"instance": instances[0], "reason": " up  grade "}, 1, 100.0)],
                                          "DRAINED")
    group = _group()
    group.fresh = promgroup._split([Sample({"instance": inst}, 99.0 if i != 6 else 50.0, 100.0)
                                    for i, inst in enumerate(instances)], "")
    for name, answer in answers.items():
        if name in group.queries:
            assert answer.converted is None or answer.converted == {
                i: promgroup._convert(group.queries[name], v) for i, v in answer.values.items()}
    members = [(inst, None) for inst in instances]
    made = group._nodes(members, answers)
    expected = [group._state(n.node.name, inst, group._columns(answers), answers["DRAINED"])
                for n, (inst, _) in zip(made, members)]
    assert [(n.state, n.error) for n in made] == expected
    assert sum(n.state is not None for n in made) == 4 and made[0].state["variables"]["DRAIN_REASON"] == "up grade"
    answers["MEMTOTAL"].error = "several series for instance 10.0.0.0:9100 (aggregate by (instance))"
    made = group._nodes(members, answers)
    assert [(n.state, n.error) for n in made] == [group._state(n.node.name, inst, group._columns(answers),
                                                               answers["DRAINED"]) for n, (inst, _) in zip(made, members)]
    assert made[0].state is None and made[0].error == f"variable MEMTOTAL: {answers['MEMTOTAL'].error}"
