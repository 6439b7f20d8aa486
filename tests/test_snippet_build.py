"""The built snippet: present, within its gzip budget, reproducible, and inside the wheel."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

SNIPPET = ROOT / "snippet"
BUILT = SNIPPET / "dni.min.js"
BUDGET = 2560  # bytes gzip, as in snippet/build.mjs


def test_built_file_is_committed_and_within_budget() -> None:
    assert BUILT.exists(), "snippet/dni.min.js is missing: cd snippet && npm ci && node build.mjs"
    body = BUILT.read_bytes()
    size = len(gzip.compress(body, 9))
    print(f"dni.min.js: {len(body)} bytes, {size} bytes gzip (budget {BUDGET})")
    assert size <= BUDGET
    text = body.decode()
    assert text.startswith("(()=>{") and "\n" not in text.strip()  # one self-running line
    assert "innerHTML" not in text and "eval(" not in text


def test_build_reproduces_the_committed_file() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (SNIPPET / "node_modules" / "esbuild").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SNIPPET, check=True,
                       capture_output=True, timeout=300)
    res = subprocess.run([node, "build.mjs", "--check"], cwd=SNIPPET, capture_output=True,
                         text=True, timeout=120)
    print(res.stdout, res.stderr)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bytes gzip" in res.stdout


@pytest.mark.slow
def test_wheel_carries_the_snippet(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("dni_broker-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        assert z.read("broker/static/dni.min.js") == BUILT.read_bytes()
