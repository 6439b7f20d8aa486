"""`dni pools ...` and `dni numbers ...` as a user runs them, against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.conftest import ADMIN_TOKEN, ROOT


def dni(broker, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DNI_")}
    base.update(env if env is not None else {"DNI_URL": broker.url, "DNI_ADMIN_TOKEN": ADMIN_TOKEN})
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], env=base, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_pools_lifecycle_from_the_cli(broker, admin, http):
    pool = json.loads(ok(dni(broker, "pools", "create", "--name", "Spring",
                             "--fallback-number", "555-019-9999", "--session-ttl", "900",
                             "--policy", "lru", "555-010-0001", "(555) 010-0002")))
    pid = pool["id"]
    assert pool["numbers"] == ["+15550100001", "+15550100002"]
    assert pool["session_ttl_s"] == 900 and pool["policy"] == "lru"
    listed = ok(dni(broker, "pools", "list"))
    assert pid in listed and "Spring" in listed and "NUMBERS" in listed.splitlines()[0]
    assert [p["id"] for p in json.loads(ok(dni(broker, "pools", "list", "--json")))] == [pid]
    assert json.loads(ok(dni(broker, "pools", "show", pid)))["name"] == "Spring"
    updated = json.loads(ok(dni(broker, "pools", "update", pid, "--name", "Summer",
                                "--fallback-number", "")))
    assert updated["name"] == "Summer" and updated["fallback_number"] is None

    added = json.loads(ok(dni(broker, "numbers", "add", pid, "+15550100003",
                              "--call-flow", "support")))
    assert added["added"] == 1 and added["call_flows"]["+15550100003"] == "support"
    bought = json.loads(ok(dni(broker, "numbers", "buy", pid, "--count", "2",
                               "--area-code", "646")))
    assert bought["bought"] == ["+16465550100", "+16465550101"]
    off = json.loads(ok(dni(broker, "numbers", "deactivate", pid, "+15550100003")))
    assert off["active"] is False and off["changed"] is True
    assert json.loads(ok(dni(broker, "numbers", "activate", pid, "+15550100003")))["changed"]
    assert "removed +15550100003" in ok(dni(broker, "numbers", "remove", pid, "+15550100003"))

    http.post("/v1/dni/session", json={"pool_id": pid, "visitor_id": "v"})
    time.sleep(1.3)  # counts reach Redis about once a second
    table = ok(dni(broker, "pools", "stats"))
    head, row = table.splitlines()[:2]
    assert head.split()[:4] == ["POOL", "NUMBERS", "ACTIVE", "UTIL"]
    assert row.split()[:5] == [pid, "4", "1", "25%", "1"]
    stats = json.loads(ok(dni(broker, "pools", "stats", pid, "--json")))
    assert stats["numbers"] == 4 and stats["counts"]["last_hour"]["new"] == 1
    assert json.loads(ok(dni(broker, "pools", "stats", "--json")))[0]["pool_id"] == pid

    assert f"deleted pool {pid}" in ok(dni(broker, "pools", "delete", pid))
    assert json.loads(ok(dni(broker, "pools", "list", "--json"))) == []


def test_cli_errors(broker, admin):
    proc = dni(broker, "pools", "show", "nosuch")
    assert proc.returncode == 1 and proc.stderr.strip().startswith("dni: pool_not_found:")
    proc = dni(broker, "pools", "create", "--name", "x", "123")
    assert proc.returncode == 1 and "invalid_number" in proc.stderr
    proc = dni(broker, "pools", "list", env={"DNI_URL": broker.url, "DNI_ADMIN_TOKEN": "wrong"})
    assert proc.returncode == 1 and "unauthorized" in proc.stderr
    proc = dni(broker, "pools", "list", env={"DNI_URL": broker.url})
    assert proc.returncode == 2 and "DNI_ADMIN_TOKEN" in proc.stderr
    # flags win over the environment
    proc = dni(broker, "pools", "list", "--url", broker.url, "--token", ADMIN_TOKEN,
               env={"DNI_URL": "http://127.0.0.1:1", "DNI_ADMIN_TOKEN": "wrong"})
    assert proc.returncode == 0, proc.stderr
    proc = dni(broker, "pools", "list", "--url", "http://127.0.0.1:1")
    assert proc.returncode == 2 and "cannot reach the broker" in proc.stderr
    proc = dni(broker, "pools", "update", "nosuch", "--session-ttl", "0")
    assert proc.returncode == 1 and "invalid_session_ttl" in proc.stderr


def test_a_broker_slow_to_answer_is_not_called_unreachable(monkeypatch):
    """GET /v1/stats of thousands of pools takes a while: a timeout says so (and that the
    broker may still be working), not that the broker cannot be reached."""
    import argparse
    import socket

    import pytest

    from broker import cli_admin

    monkeypatch.setattr(cli_admin, "TIMEOUT_S", 0.3)
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        args = argparse.Namespace(url=url, token="t")
        with pytest.raises(cli_admin.CliError) as err:
            cli_admin._call(args, "GET", "/v1/stats")
    assert "did not answer within 0.3 s" in str(err.value) and "GET /v1/stats" in str(err.value)
    assert "cannot reach" not in str(err.value)
