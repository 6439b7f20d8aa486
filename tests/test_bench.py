"""`dni bench`: each scenario runs for a second or two against the real Redis/broker
fixtures and produces the documented output; the naive baseline's double assignments are
detected. No timing is asserted (the machine is shared)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.cli import main
from bench.naive import double_assignments
from tests.conftest import ADMIN_TOKEN, ROOT

LOAD = ["--duration", "1.5", "--procs", "1", "--quiet"]


def run(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "out.json"
    assert main([*argv, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def check_record(rec: dict) -> None:
    meta = rec["meta"]
    assert meta["commit"] and meta["python"] and meta["machine"]["cores"]
    assert meta["redis"]["redis_version"] and "used_memory" in meta["redis"]
    assert meta["packages"]["hiredis"]
    for r in rec["runs"]:
        assert r["requests"] > 0 and r["throughput"] > 0
        assert set(r["latency_ms"]) >= {"p50", "p90", "p99", "p99.9"}
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["p99.9"]
        assert isinstance(r["statuses"], dict) and r["errors"] == 0


def test_engine_scenario_open_loop(tmp_path, redis_server, r):
    rec = run(tmp_path, "engine", "--redis-url", redis_server, "--rate", "300",
              "--pool-size", "100", "--speed", "60", "--warmup", "0", *LOAD)
    check_record(rec)
    (res,) = rec["runs"]
    assert res["offered_rate"] == 300
    assert res["statuses"].get("new", 0) > 0
    assert res["spec"]["target"] == "engine"


def test_the_warmup_is_run_but_not_counted(tmp_path, redis_server, r):
    """Open loop at 400/s for 1.5 s after 1.5 s of warm-up: about 600 requests are counted,
    not 1,200, and the measured mix starts fewer sessions than a run without warm-up."""
    rec = run(tmp_path, "engine", "--redis-url", redis_server, "--rate", "400",
              "--pool-size", "5000", "--speed", "60", "--warmup", "1.5", *LOAD)
    (res,) = rec["runs"]
    assert 450 <= res["requests"] <= 750, res["requests"]
    cold = run(tmp_path, "engine", "--redis-url", redis_server, "--rate", "400",
               "--pool-size", "5000", "--speed", "60", "--warmup", "0", *LOAD)["runs"][0]
    assert res["new_session_share"] < cold["new_session_share"]


def test_engine_scenario_peak_then_half(tmp_path, redis_server, r, capsys):
    rec = run(tmp_path, "engine", "--redis-url", redis_server, "--pool-size", "100",
              "--connections", "8", *LOAD)
    check_record(rec)
    peak, half = rec["runs"]
    assert peak["spec"]["closed"] and not half["spec"]["closed"]
    assert half["offered_rate"] == pytest.approx(peak["throughput"] * 0.5)
    table = capsys.readouterr().out
    assert "p99 ms" in table and "engine max (closed loop)" in table


def test_edge_scenario_against_a_running_broker(tmp_path, broker, r):
    rec = run(tmp_path, "edge", "--url", broker.url, "--token", ADMIN_TOKEN,
              "--redis-url", broker.env["DNI_REDIS_URL"], "--rate", "200",
              "--pool-size", "50", "--speed", "60", "--warmup", "0", *LOAD)
    check_record(rec)
    st = rec["runs"][0]["statuses"]
    assert st.get("new", 0) > 0 and set(st) <= {"new", "reused", "fallback", "alive",
                                                "expired"}
    # the run's pool is deleted at its end, so a second run finds its numbers free (and
    # a pool over the API's 10,000 numbers a request is added in parts)
    run(tmp_path, "edge", "--url", broker.url, "--token", ADMIN_TOKEN, "--rate", "100",
        "--pool-size", "12000", "--speed", "60", "--warmup", "0", "--duration", "1",
        "--procs", "1", "--quiet")
    pools = httpx.get(broker.url + "/v1/pools", timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["pools"]
    assert pools == []


def test_pressure_reports_fallback_and_utilization(tmp_path, redis_server, r):
    rec = run(tmp_path, "pressure", "--redis-url", redis_server, "--rate", "400",
              "--pool-size", "5", "--session-s", "30", "--speed", "30", "--duration", "4",
              "--procs", "1", "--quiet")
    p = rec["pressure"]
    assert p["pool_size"] == 5 and 0 < p["fallback_share_of_answers"] < 1
    assert 0 < p["turned_away_share"] < 1
    sizing = p["admin_api_sizing"]
    assert sizing["ended_sessions_last_hour"] > 0  # 1 s leases in a 4 s run: some ended
    # live sessions estimated from the rate of new ones and the leases' length: near the
    # 5 numbers held all along (the estimate counts the run's start, when they were not)
    assert 2 <= p["estimated_live_sessions_littles_law"] <= 8
    assert p["utilization_over_time"] and p["peak_utilization"] == 1.0


def test_naive_baseline_double_assigns_and_the_engine_does_not(tmp_path, redis_server, r):
    rec = run(tmp_path, "naive", "--redis-url", redis_server, "--pool-size", "20",
              "--connections", "32", *LOAD)
    assert rec["naive"]["naive"]["double_assignments"] > 0
    assert rec["naive"]["engine"]["double_assignments"] == 0
    assert all(t > 0 for s in rec["naive"].values() for t in s["throughput"])


def test_double_assignment_detection():
    ttl = 1000
    # number, visitor, expires_at
    assert double_assignments([("+1", "a", 2000), ("+1", "b", 3000)], ttl) == 0  # back to back
    assert double_assignments([("+1", "a", 2000), ("+1", "b", 2500)], ttl) == 1  # overlap
    assert double_assignments([("+1", "a", 2000), ("+2", "b", 2000)], ttl) == 0
    assert double_assignments([("+1", "a", 2000), ("+1", "a", 2500)], ttl) == 0  # same holder


needs_rb = pytest.mark.skipif(shutil.which("redis-benchmark") is None,
                              reason="redis-benchmark not installed")


@needs_rb
def test_engine_ratio_and_breakdown(tmp_path, redis_server, r):
    rec = run(tmp_path, "engine-ratio", "--redis-url", redis_server, "--requests", "3000",
              "--rounds", "1", "--investigate")
    assert rec["ratio_median"] > 0
    w = rec["where_the_time_goes"]
    assert w["evalsha_usec_per_call"] > 0 and "zadd" in w["inner_commands"]
    from bench.redis_targets import VARIANTS
    assert set(VARIANTS) <= set(rec["variants"]) and len(rec["variants"]) == len(VARIANTS) + 3
    assert all(v["rps"] > 0 and v["usec_per_call"] > 0 for v in rec["variants"].values())


@needs_rb
def test_engine_ratio_reuse_only(tmp_path):
    # its own embedded Redis: the suite's shared one also counts the test broker's sidecar
    rec = run(tmp_path, "engine-ratio", "--requests", "3000", "--rounds", "1", "--reuse",
              "--keep-aof")
    inner = rec["where_the_time_goes"]["inner_commands"]
    # every call found its visitor's session: no number was picked or leased
    assert "zrange" not in inner and "zcount" not in inner and "xadd" not in inner
    assert inner["pexpireat"]["per_script"] == 1.0


@needs_rb
def test_scale_and_memory(tmp_path, redis_server, r):
    rec = run(tmp_path, "scale", "--redis-url", redis_server, "--requests", "2000",
              "--rounds", "1", "--pool-size", "2000", "--live", "3000", "--spare", "3000")
    for name in ("assign_5_vs_100k_numbers", "reuse_5_vs_100k_numbers",
                 "reuse_1k_vs_3k_live_sessions", "assign_1k_vs_3k_live_sessions"):
        assert rec[name]["cost_ratio"] > 0
    rec = run(tmp_path, "memory", "--redis-url", redis_server, "--sessions", "2000")
    assert rec["live_sessions"] == 2000 and rec["bytes_per_session_less_attribution"] > 0


def test_dni_bench_is_a_dni_subcommand():
    out = subprocess.run([sys.executable, "-m", "broker.cli", "bench", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "naive" in out.stdout and "edge" in out.stdout


def test_cpu_seconds_counts_a_process_tree_by_name(tmp_path):
    """edge-ratio's CPU-per-request figures: a child's CPU time is found under its name,
    and a process outside the tree is not counted."""
    from bench.common import cpu_seconds

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n" \
           "open(__import__('sys').argv[1], 'w').close()\ntime.sleep(30)"
    done = tmp_path / "burnt"
    child = subprocess.Popen(["sleep", "30"])
    burner = subprocess.Popen([sys.executable, "-c", burn, str(done)])
    try:
        while not done.exists():
            assert burner.poll() is None
        mine = cpu_seconds(os.getpid())
        assert mine.get("sleep", -1) >= 0.0
        # our own tree holds the burner: its 0.5 s are there (clock ticks: allow 0.1 s)
        assert mine.get("python", 0) + mine.get(Path(sys.executable).name, 0) >= 0.4
        alone = cpu_seconds(child.pid)
        assert list(alone) == ["sleep"] and alone["sleep"] < 0.1
        assert cpu_seconds(2 ** 22 + 7) == {}  # no such process
    finally:
        for p in (child, burner):
            p.kill()
            p.wait()


def test_bench_help_works_without_the_bench_extra():
    """An installed wheel without `[bench]` (no hdrh): help is shown with what to
    install; a run says it in one line."""
    code = ("import sys; sys.modules['hdrh'] = None\n"
            "from bench.cli import main\n"
            "assert main(['--help']) == 0\n"
            "main(['edge'])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert "Scenarios:" in out.stdout and "pip install 'dni-broker[bench]'" in out.stdout
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith("dni bench: hdrh") and lines[0].endswith(
        "is missing: pip install 'dni-broker[bench]'"), out.stderr
