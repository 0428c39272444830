"""`serve/checks.py`: which Host names a server answers to, as a unit and against a real server on IPv6 loopback."""
from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargpt.serve.checks import Hosts, _hostname
from conftest import Server


@pytest.mark.parametrize("listen, allowed, host", [
    ("::1", (), "[::1]:8000"), ("::1", (), "[0:0::1]:8000"), ("::1", ("::1",), "[::1]"),
    ("127.0.0.1", (), "localhost:1"), ("127.0.0.1", (), "[::1]:1"), ("0.0.0.0", (), "10.1.2.3:80"),
    ("127.0.0.1", ("Box.Local",), "box.local:80"), ("127.0.0.1", ("[fe80::1]",), "[FE80::1]:5")])
def test_the_servers_own_names_in_any_spelling_are_admitted(listen, allowed, host):
    assert Hosts(listen, allowed).admit(_hostname(host)), (listen, allowed, host)


@pytest.mark.parametrize("listen", ["::1", "127.0.0.1", "0.0.0.0", "::"])
@pytest.mark.parametrize("host", [":8000", "", ":", "[]:80", "attacker.example", "attacker.example:8000"])
def test_a_host_that_names_nothing_or_another_name_is_refused(listen, host):
    assert not Hosts(listen).admit(_hostname(host)), (listen, host)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_host_header_is_read_without_an_exception_and_admitted_only_when_it_names_the_server(host):
    name = _hostname(host)
    assert Hosts("::1").admit(name) == (name in {"localhost", "127.0.0.1", "::1"})


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("extra", [(), ("--allowed-host", "::1")])
def test_a_server_on_ipv6_loopback_answers_its_own_printed_url(runs_dir_for_hosts, tmp_path, extra):
    server = Server("--runs-dir", runs_dir_for_hosts, "--device", "cpu", "--host", "::1", *extra, cwd=tmp_path)
    try:
        assert server.url.startswith("http://[::1]:"), server.url
        assert server.request("GET", "/api/runs")[0] == 200
        assert server.request("GET", "/api/runs", headers={"Host": f":{server.port}"})[0] == 403
    finally:
        server.stop()


@pytest.fixture
def runs_dir_for_hosts(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    return runs
