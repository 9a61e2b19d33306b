"""Submission-test pages: parsing, host matching, fetching over file:// and real HTTP."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support import free_port
from lbserver.dns.healthurl import HealthFetchError, fetch, format_time, match_hosts, match_nodes, parse_page, \
    parse_timestamp
from tests.support.cluster import PageServer

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0


def test_parse_newest_wins_and_flags():
    page = parse_page(
        "# submission tests\n"
        f"{NOW - 600:.0f} 1 wms01.example.org\n"
        f"{NOW - 60:.0f} 0 WMS01.example.org.\n"
        f"{NOW - 30:.0f} 2 wms02.example.org\n"
        "\n", NOW, 3600)
    assert page.results["wms01.example.org"].ok
    assert not page.results["wms02.example.org"].ok
    assert page.results["wms02.example.org"].flag == 2
    assert page.problems == ()


def test_parse_reports_bad_lines_with_numbers():
    page = parse_page(f"{NOW:.0f} 0 a\ngarbage\nyesterday 0 b\n{NOW:.0f} x c\n", NOW, 3600)
    assert set(page.results) == {"a"}
    assert [p.split(":")[0] for p in page.problems] == ["line 2", "line 3", "line 4"]
    assert "bad ERRORFLAG" in page.problems[2]


def test_parse_ignores_stale_results():
    page = parse_page(f"{NOW - 7200:.0f} 1 old.example.org\n{NOW - 10:.0f} 0 new\n", NOW, 3600)
    assert "old.example.org" not in page.results
    assert page.stale == {"old.example.org": 7200}


def test_stale_age_is_the_newest_results():
    page = parse_page(f"{NOW - 9000:.0f} 1 old\n{NOW - 7200:.0f} 0 old\n", NOW, 3600)
    assert page.stale == {"old": 7200}


@pytest.mark.parametrize("ts", ["1e30", "1e17", "9999999999", f"{NOW + 301:.0f}", "9999-12-31T23:59:59"])
def test_future_timestamps_are_problem_lines(ts):
    # Such a line would otherwise win "newest" for ever, or break the formatting of its time.
    page = parse_page(f"{ts} 1 wms1\n{NOW - 5:.0f} 0 wms2\n", NOW, 3600)
    assert set(page.results) == {"wms2"}
    assert len(page.problems) == 1 and page.problems[0].startswith("line 1: ")
    assert "in the future" in page.problems[0]


def test_small_clock_skew_is_allowed():
    page = parse_page(f"{NOW + 299:.0f} 1 wms1\n", NOW, 3600)
    assert not page.results["wms1"].ok and page.problems == ()


@pytest.mark.parametrize("ts", [1e30, -1e30, 1e17, float("nan"), 1_700_000_000])
def test_format_time_never_raises(ts):
    text = format_time(ts)
    assert text and (text.startswith("2023-11-1") or "Unix time" in text)


def test_iso_timestamps():
    assert parse_timestamp("2023-11-14T22:13:20Z") == pytest.approx(1_700_000_000)
    assert parse_timestamp("2023-11-14T23:13:20+01:00") == pytest.approx(1_700_000_000)
    with pytest.raises(ValueError):
        parse_timestamp("nan")


def test_match_by_name_host_and_first_label():
    page = parse_page(
        f"{NOW:.0f} 1 wms01.example.org\n"     # first label = node name wms01
        f"{NOW:.0f} 1 wms02\n"                 # short name = first label of node host
        f"{NOW:.0f} 1 10.0.0.3\n"              # address host
        f"{NOW:.0f} 1 other.example.org\n", NOW, 3600)
    nodes = [("wms01", "10.0.0.1"), ("b", "wms02.example.org"), ("c", "10.0.0.3"), ("d", "wms04.example.org")]
    m = match_nodes(page, nodes)
    assert set(m) == {"wms01", "b", "c"}


def test_match_ambiguous_first_label_is_not_guessed():
    page = parse_page(f"{NOW:.0f} 1 wms01\n", NOW, 3600)
    assert match_nodes(page, [("x", "wms01.a.org"), ("y", "wms01.b.org")]) == {}


def test_ip_literals_never_match_by_first_label():
    # "10.0.0.9" has first label "10", like node address 10.0.0.1: not the same host.
    page = parse_page(f"{NOW:.0f} 1 10.0.0.9\n{NOW:.0f} 1 fd00::9\n", NOW, 3600)
    assert match_nodes(page, [("xapp1", "10.0.0.1"), ("xapp2", "xapp2.example.org")]) == {}
    assert match_nodes(page, [("10", "fd00::1")]) == {}


def test_two_full_names_never_match_by_first_label():
    page = parse_page(f"{NOW:.0f} 1 wms01.b.org\n", NOW, 3600)
    assert match_nodes(page, [("x", "wms01.a.org")]) == {}
    assert match_nodes(page, [("wms01", "10.0.0.1")])["wms01"].flag == 1  # short node name: matches


def test_match_hosts_prefers_exact_and_reports_every_name():
    nodes = [("wms01", "wms01.a.org"), ("wms02", "10.0.0.2")]
    assert match_hosts(["WMS01.a.org.", "wms01", "10.0.0.2", "wms02.c.org"], nodes) == {
        "wms01": ["wms01.a.org", "wms01"], "wms02": ["10.0.0.2"]}  # exact beats short names
    assert match_hosts(["wms01.c.org"], nodes) == {"wms01": ["wms01.c.org"]}


def test_newest_of_several_matching_names_wins():
    page = parse_page(f"{NOW - 9:.0f} 1 wms01\n{NOW - 5:.0f} 0 wms01.a.org\n{NOW - 7:.0f} 1 wms01.a.org.\n", NOW, 3600)
    assert match_nodes(page, [("wms01", "wms01.a.org")])["wms01"].ok


def test_exact_match_beats_first_label():
    page = parse_page(f"{NOW:.0f} 0 wms01.a.org\n{NOW + 1:.0f} 1 wms01.b.org\n", NOW + 1, 3600)
    m = match_nodes(page, [("x", "wms01.a.org")])
    assert m["x"].ok


def test_fetch_file(tmp_path):
    p = tmp_path / "tests.txt"
    p.write_text(f"{NOW:.0f} 0 a\n")
    assert fetch(p.as_uri(), 2) == f"{NOW:.0f} 0 a\n"
    with pytest.raises(HealthFetchError, match="No such file"):
        fetch((tmp_path / "missing.txt").as_uri(), 2)
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(HealthFetchError, match="larger than 1000 bytes"):
        fetch(big.as_uri(), 2, max_bytes=1000)


def test_fetch_rejects_other_schemes():
    with pytest.raises(HealthFetchError, match="unsupported URL scheme 'ftp'"):
        fetch("ftp://127.0.0.1/x", 1)


@pytest.fixture
def http_page():
    page = PageServer(f"{time.time():.0f} 1 wms01\n".encode(), "/tests.txt")
    yield page.root
    page.close()


def test_fetch_http(http_page):
    assert " 1 wms01" in fetch(http_page + "/tests.txt", 2)
    with pytest.raises(HealthFetchError, match="HTTP 404"):
        fetch(http_page + "/nothing", 2)


def test_fetch_http_refused():
    port = free_port()
    with pytest.raises(HealthFetchError, match=f"127.0.0.1:{port}/x: .*refused"):
        fetch(f"http://127.0.0.1:{port}/x", 2)


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body", "headers"])
def test_fetch_of_a_dripping_server_is_bounded_as_a_whole(drip_headers):
    """A page that trickles in, headers or body, never holds the DNS cycle past the timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = threading.Event()

    def drip() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\n" + (b"" if drip_headers else b"Content-Type: text/plain\r\n\r\n"))
            while not stop.is_set():
                try:
                    conn.sendall(b"X" if drip_headers else b"1")
                except OSError:
                    return
                stop.wait(0.2)

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(HealthFetchError, match="no complete answer within 1 s"):
            fetch(f"http://127.0.0.1:{srv.getsockname()[1]}/page", timeout=1.0)
    finally:
        stop.set()
        srv.close()
    assert time.monotonic() - started < 3  # each byte alone came well within the timeout
