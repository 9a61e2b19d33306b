"""lbaconfig.xml loading and --check-config (no network)."""

import ipaddress
import subprocess
import textwrap

import pytest

from tests.support import ROOT, python_cmd
from tests.support.cluster import env_with_root
from common.xmlconfig import ConfigError
from lbagent import config
from lbagent.cli import main


def write(tmp_path, body: str, name: str = "lbaconfig.xml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip())
    return str(path)


FULL = """\
<?xml version="1.0"?>
<lbaconfig>
  <agent listen="[::]:8101" sample-interval="2.5" max-request-bytes="4096" request-timeout="3"/>
  <log file="/var/log/lbagent.log" level="WARNING"/>
  <access>
    <allow from="127.0.0.0/8"/>
    <allow from="10.0.0.7"/>
    <allow from="fd00::/8"/>
  </access>
  <variables>
    <variable name="NBX11SESS" type="command" command="echo 3" timeout="1.5"/>
    <variable name="GDM" type="process" pattern="^gdm3?$"/>
    <variable name="SCRATCH" type="disk" path="/scratch"/>
    <variable name="QUEUE" type="file" path="/run/wms/queue"/>
    <variable name="ROOM" type="constant" value="3"/>
    <variable name="SITE" type="constant" value="north"/>
  </variables>
</lbaconfig>
"""


@pytest.mark.unit
def test_full_config(tmp_path):
    cfg = config.load(write(tmp_path, FULL))
    assert cfg.listen == ("::", 8101)
    assert cfg.sample_interval == 2.5
    assert cfg.max_request_bytes == 4096
    assert cfg.request_timeout == 3.0
    assert cfg.log_file == "/var/log/lbagent.log" and cfg.log_level == "warning"
    assert cfg.allow == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.7/32"),
                         ipaddress.ip_network("fd00::/8"))
    v = {x.name: x for x in cfg.variables}
    assert list(v) == ["NBX11SESS", "GDM", "SCRATCH", "QUEUE", "ROOM", "SITE"]
    assert v["NBX11SESS"].command == "echo 3" and v["NBX11SESS"].timeout == 1.5
    assert v["NBX11SESS"].line == 11
    assert v["GDM"].pattern.search("gdm3") and not v["GDM"].pattern.search("xgdm")
    assert v["SCRATCH"].path == "/scratch" and v["QUEUE"].type == "file"
    assert v["ROOM"].value == 3 and v["SITE"].value == "north"


@pytest.mark.unit
def test_defaults(tmp_path):
    cfg = config.load(write(tmp_path, "<lbaconfig/>"))
    assert cfg.listen == ("0.0.0.0", 8001)
    assert cfg.sample_interval == 5.0
    assert cfg.max_request_bytes == 65536
    assert cfg.request_timeout == 5.0
    assert cfg.allow is None
    assert cfg.variables == ()
    assert config.log_settings(cfg) == (None, None)


@pytest.mark.unit
def test_shipped_config_is_valid():
    cfg = config.load(str(ROOT / "etc" / "lbaconfig.xml"))
    assert cfg.listen == ("0.0.0.0", 8001) and cfg.sample_interval == 5
    assert ipaddress.ip_network("192.168.0.0/16") in cfg.allow
    assert ipaddress.ip_network("::1/128") in cfg.allow


BROKEN = [
    # (body, line, fragment of the message)
    ("""\
     <lbaconfig>
       <agent listen="0.0.0.0:8001"/>
       <bogus/>
     </lbaconfig>""", 3, "bogus"),
    ("""\
     <lbaconfig>
       <access>
         <allow/>
       </access>
     </lbaconfig>""", 3, "missing attribute from"),
    ("""\
     <lbaconfig>

       <agent sample-interval="often"/>
     </lbaconfig>""", 3, "sample-interval='often': expected a number"),
    ("""\
     <lbaconfig>
       <access>
         <allow from="127.0.0.0/8"/>
         <allow from="10.0.0.300/24"/>
       </access>
     </lbaconfig>""", 4, "10.0.0.300/24"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="ROOM" type="constant" value="1"/>
         <variable name="X" type="constant" value="2"/>
         <variable name="ROOM" type="constant" value="3"/>
       </variables>
     </lbaconfig>""", 5, "duplicate variable 'ROOM' (also defined at line 3)"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="GDM" type="process" pattern="gdm("/>
       </variables>
     </lbaconfig>""", 3, "not a valid regular expression"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="X" type="command"/>
       </variables>
     </lbaconfig>""", 3, "missing attribute command"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="X" type="disk" path="/" pattern="x"/>
       </variables>
     </lbaconfig>""", 3, "attribute pattern does not apply to type disk"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="X" type="sensor" path="/"/>
       </variables>
     </lbaconfig>""", 3, "unknown type 'sensor'"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="LOADAVG" type="constant" value="1"/>
       </variables>
     </lbaconfig>""", 3, "built-in"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="nbx" type="constant" value="1"/>
       </variables>
     </lbaconfig>""", 3, "upper-case"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="T" type="command" command="true" timeout="0"/>
       </variables>
     </lbaconfig>""", 3, "timeout='0': must be greater than 0"),
    ("""\
     <lbaconfig>
       <agent listen="8001"/>
     </lbaconfig>""", 2, "HOST:PORT"),
    ("""\
     <lbaconfig>
       <log level="loud"/>
     </lbaconfig>""", 2, "level='loud'"),
    ("""\
     <lbaconfig>
       <access/>
     </lbaconfig>""", 2, "<access> has no <allow>"),
    ("""\
     <lbaconfig>
       <variables/>
       <agent/>
       <variables/>
     </lbaconfig>""", 4, "<variables> given twice (first at line 2)"),
    ("""\
     <lbaconfig>
       <agent listen="0.0.0.0:8001">
     </lbaconfig>""", 3, "not well-formed"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="Q" type="count"/>
       </variables>
     </lbaconfig>""", 3, "<variable name='Q' type='count'> is missing attribute path"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="Q" type="count" path="/var/q/*" pattern="x"/>
       </variables>
     </lbaconfig>""", 3, "attribute pattern does not apply to type count"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="Q" type="count" path="/var/q/*" timeout="-1"/>
       </variables>
     </lbaconfig>""", 3, "timeout='-1': must be greater than 0"),
    ("""\
     <lbaconfig>
       <variables>
         <variable name="D" type="disk" path="/" timeout="5"/>
       </variables>
     </lbaconfig>""", 3, "attribute timeout does not apply to type disk"),
]


@pytest.mark.unit
def test_count_variable(tmp_path):
    cfg = config.load(write(tmp_path, """\
        <lbaconfig>
          <variables>
            <variable name="WMQUEUE" type="count" path="/var/glite/workload_manager/jobdir/new/*"/>
            <variable name="JCQUEUE" type="count" path="/var/glite/jobcontrol/jobdir/new" timeout="7.5"/>
          </variables>
        </lbaconfig>"""))
    wm, jc = cfg.variables
    assert (wm.type, wm.path, wm.timeout) == ("count", "/var/glite/workload_manager/jobdir/new/*", 2.0)
    assert (jc.path, jc.timeout) == ("/var/glite/jobcontrol/jobdir/new", 7.5)


@pytest.mark.unit
@pytest.mark.parametrize("body,line,fragment", BROKEN)
def test_check_config_reports_file_and_line(tmp_path, capsys, body, line, fragment):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.line == line, str(info.value)
    assert fragment in info.value.message
    assert main(["--check-config", "-c", path]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{path}:{line}: "), err
    assert fragment in err


@pytest.mark.unit
def test_doctype_refused(tmp_path):
    path = write(tmp_path, """\
        <?xml version="1.0"?>
        <!DOCTYPE lbaconfig [<!ENTITY x "y">]>
        <lbaconfig/>""")
    with pytest.raises(ConfigError, match="DOCTYPE"):
        config.load(path)


@pytest.mark.unit
def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        config.load(str(tmp_path / "absent.xml"))


@pytest.mark.daemon
def test_check_config_command_line(tmp_path):
    """The real command: exit 0 on the shipped file, 1 with FILE:LINE on a broken one."""
    ok = subprocess.run(python_cmd("lbagent", "--check-config", "-c", str(ROOT / "etc" / "lbaconfig.xml")),
                        capture_output=True, text=True, timeout=30, env=env_with_root())
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout
    bad = write(tmp_path, BROKEN[4][0])
    res = subprocess.run(python_cmd("lbagent", "--check-config", "-c", bad),
                         capture_output=True, text=True, timeout=30, env=env_with_root())
    assert res.returncode == 1
    assert res.stderr.strip() == f"{bad}:5: duplicate variable 'ROOM' (also defined at line 3)"


@pytest.mark.daemon
def test_help_describes_the_agent():
    res = subprocess.run(python_cmd("lbagent", "--help"), capture_output=True, text=True, timeout=30, env=env_with_root())
    assert res.returncode == 0
    for word in ("get_state", "SIGHUP", "--check-config", "/etc/mille-xterm/lbaconfig.xml", "NBSESSIONS"):
        assert word in res.stdout

