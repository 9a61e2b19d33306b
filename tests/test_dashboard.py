"""The HTML dashboard: escaping and policy offline, then a live page in Debian's headless chromium.

The live test leaves two screenshots in tests/artifacts/ (dashboard.png at
laptop size, dashboard-phone.png at phone size) for a person to look at.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import subprocess
import urllib.request
from pathlib import Path

import lxml.html

import pytest

from lbserver.mgmt.api import Api
from lbserver.mgmt.dashboard import TEMPLATE, content_security_policy, embed_json
from tests.support.cluster import offline_balancer, start_agent, start_balancer
from tests.support import ARTIFACTS, wait_until
from tests.support.browser import chromium

HOSTILE_GROUP = "LAB <img src=x onerror=alert(1)>"
HOSTILE_VALUE = '<img src=x onerror="document.title=\'pwned\'">'


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.unit
def test_embedded_json_cannot_end_its_script_element():
    doc = {"why": "</script><script>alert(1)</script><!-- & \u2028"}
    text = embed_json(doc)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == doc


@pytest.mark.unit
def test_policy_allows_exactly_the_inline_script_and_style():
    template = TEMPLATE.read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", template, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    csp = content_security_policy(template)
    assert f"script-src 'sha256-{digest}';" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    # self-contained: nothing loaded from elsewhere
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", template)
    assert "@import" not in template and "url(" not in template


@pytest.mark.unit
def test_render_embeds_escaped_status(tmp_path):
    bal = offline_balancer(tmp_path)
    bal.set_drained("xapp2", True)
    page = Api(bal, bal).dashboard().decode()
    assert page.startswith("<!DOCTYPE html>")
    tree = lxml.html.fromstring(page)
    data = json.loads(tree.get_element_by_id("initial-data").text)
    assert data["status"]["nodes"]["xapp2"]["drained"] is True
    assert data["status"]["nodes"]["xapp2"]["health"] == "unknown"  # never polled
    assert set(data["history"]) == {"t", "nodes"}
    csp = tree.xpath('//meta[@http-equiv="Content-Security-Policy"]/@content')[0]
    assert csp.startswith("default-src 'none'")


@pytest.mark.system
def test_live_dashboard_in_chromium(procs, tmp_path):
    hostile = f'<variable name="NOTE" type="constant" value="{HOSTILE_VALUE.replace("<", "&lt;").replace(">", "&gt;").replace(chr(34), "&quot;")}"/>'
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load, extra=hostile if i == 0 else "")
              for i, load in enumerate((10, 40, 99))]
    members = [(a.name, a.url) for a in agents] + [("gone", "http://127.0.0.9:9")]
    groups = {"PROD": members,
              HOSTILE_GROUP.replace("<", "&lt;").replace(">", "&gt;"): [members[0], members[1]]}
    bal = start_balancer(procs, tmp_path, groups,
                         rules='<variable name="SIMLOAD" custom="true" weight="100" capacity="100" critical="95"/>')
    status = wait_until(lambda: (s := bal.status())["nodes"]["xapp3"]["health"] == "unhealthy"
                        and s["nodes"]["xapp1"]["health"] == "up" and s, 15, what="agents polled")
    urllib.request.urlopen(urllib.request.Request(bal.mgmt_url + "/nodes/xapp2/drain", method="POST", data=b""),
                           timeout=5).read()
    for _ in range(30):
        bal.ask()
    expected = {n: v["health"] for n, v in bal.status()["nodes"].items()}
    assert expected == {"xapp1": "up", "xapp2": "drained", "xapp3": "unhealthy", "gone": "down"}
    assert status["groups"][HOSTILE_GROUP]["nodes"] == ["xapp1", "xapp2"]

    # --virtual-time-budget lets the page's timers run: several refreshes through fetch()
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", bal.mgmt_url + "/").stdout
    tree = lxml.html.fromstring(dom)
    body = tree.find("body")
    assert int(body.get("data-refreshes", "0")) >= 1, "the page did not refresh itself from /status"
    prod = tree.xpath('//section[@id="groups"]/div[@class="card"]')[0]
    assert prod.xpath('.//h2/text()') == ["PROD"]
    rows = {tr.get("data-node"): tr for tr in prod.xpath('.//tr[contains(@class, "node")]')}
    assert {n: tr.get("data-health") for n, tr in rows.items()} == expected
    for name, tr in rows.items():
        cells = {td.get("data-label"): td.text_content().strip() for td in tr.findall("td")}
        assert cells["Node"].endswith(name)
        assert cells["Health"] == expected[name]
    assert "drained by admin" in rows["xapp2"].text_content()
    assert "critical 95" in rows["xapp3"].text_content()
    assert "refused" in rows["gone"].text_content()
    assert rows["gone"].xpath('string(td[@data-label="Last poll"])') == "never"
    # every weight explained: the rules table of an opened row
    rules = prod.xpath('.//table[@data-rules="xapp3"]')[0]
    cells = {td.get("data-label"): td.text_content().strip() for td in rules.xpath(".//tr[td]")[0].findall("td")}
    assert cells["Rule"] == "SIMLOAD" and cells["Capacity"] == "100.00" and cells["Critical"] == "95.00"
    assert cells["Note"] == "at or over critical"
    # untrusted strings are shown as text, never turned into elements
    assert tree.xpath("//img") == []
    assert HOSTILE_GROUP in tree.xpath('//section[@id="groups"]//h2/text()')
    assert any(HOSTILE_VALUE in chip.text_content() for chip in tree.xpath('//span[contains(@class, "chip")]'))
    title = tree.findtext(".//title")
    assert title == "⚠ 3/4 up · lbserver", title
    legend = tree.get_element_by_id("legend-weight").text_content()
    assert all(n in legend for n in expected)
    assert tree.xpath('//svg[@id="chart-weight"]/*')  # axes and series were drawn

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, size in (("dashboard.png", (1280, 900)), ("dashboard-phone.png", (390, 844))):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        chromium(tmp_path, "--virtual-time-budget=3000", f"--screenshot={shot}",
                 f"--window-size={size[0]},{size[1]}", bal.mgmt_url + "/")
        assert png_size(shot) == size
        assert shot.stat().st_size > 20000  # a rendered page, not a blank one
