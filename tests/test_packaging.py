"""`pip install .` gives a working broker: scripts travel in the wheel; compose file sane."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml

from broker.scripts import lua_dir
from tests.conftest import ADMIN_TOKEN, ROOT, free_port


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(ROOT)], check=True, timeout=300)
    (path,) = out.glob("dni_broker-*.whl")
    return path


@pytest.mark.slow
def test_wheel_carries_the_scripts(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split("/")[-1] for n in names if n.startswith("broker/lua/")}
    assert shipped == {p.name for p in lua_dir().glob("*.lua")} and shipped
    assert any(n.endswith("entry_points.txt") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
               for n in names), names


@pytest.mark.slow
def test_fresh_venv_install_serves_the_contract(wheel: Path, tmp_path: Path, redis_server, r):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=600)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DNI_", "PYTHON"))}
    env.update(DNI_REDIS_URL=redis_server, DNI_ADMIN_TOKEN=ADMIN_TOKEN)
    # run from an empty folder so nothing from the source tree can be imported
    proc = subprocess.Popen([str(venv / "bin" / "dni"), "serve", "--port", str(port)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        pool = httpx.post(url + "/v1/pools", headers=admin,
                          json={"name": "w", "numbers": ["+15550100001"]})
        assert pool.status_code == 201
        pool_id = pool.json()["id"]
        added = httpx.post(f"{url}/v1/pools/{pool_id}/numbers", headers=admin,
                           json={"numbers": ["+15550100002"]})
        assert added.status_code == 200
        s = httpx.post(url + "/v1/dni/session", json={"pool_id": pool_id, "visitor_id": "v"})
        assert s.json()["status"] == "new"
        hb = httpx.post(url + "/v1/dni/heartbeat", json={
            "pool_id": pool_id, "visitor_id": "v", "session_id": s.json()["session_id"]})
        assert hb.json()["status"] == "alive"
        stats = httpx.get(f"{url}/v1/pools/{pool_id}/stats", headers=admin).json()
        assert (stats["numbers"], stats["active_sessions"]) == (2, 1)
    finally:
        proc.terminate()
        proc.wait(20)


def test_docker_compose_wires_the_broker_to_its_redis():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    broker = services["broker"]
    assert broker["build"] == "."
    assert broker["environment"]["DNI_REDIS_URL"] == "redis://redis:6379/0"
    assert "DNI_ADMIN_TOKEN" in broker["environment"]
    assert broker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert broker["ports"] == ["8000:8000"]
    assert "/readyz" in " ".join(broker["healthcheck"]["test"])
    assert broker["restart"] == services["redis"]["restart"] == "unless-stopped"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir ." in dockerfile
    assert '"dni", "serve", "--host", "0.0.0.0", "--port", "8000"' in dockerfile
