"""Prometheus config, recording rules and alerts checked by Prometheus' own promtool (Debian package `prometheus`).

`promtool test rules` evaluates the alerts on synthetic series offline: each alert has a firing case and a
look-alike that must stay silent (monitoring/prometheus/tests/).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROM_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus (make test)")


def promtool(*args: str, cwd: Path = PROM_DIR) -> str:
    out = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"promtool {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def test_rules_are_valid():
    out = promtool("check", "rules", *sorted(str(p) for p in (PROM_DIR / "rules").glob("*.yml")))
    assert "SUCCESS" in out


def test_prometheus_config_is_valid_and_loads_the_rules():
    out = promtool("check", "config", "prometheus.yml")
    assert "1 rule files found" in out


def test_rule_unit_tests_pass():
    tests = sorted(str(p) for p in (PROM_DIR / "tests").glob("*.test.yml"))
    assert tests
    out = promtool("test", "rules", *tests, cwd=PROM_DIR / "tests")
    assert "SUCCESS" in out and "FAILED" not in out


def test_every_alert_has_a_unit_test():
    rules = (PROM_DIR / "rules" / "zimage.rules.yml").read_text()
    tested = "".join(p.read_text() for p in (PROM_DIR / "tests").glob("*.test.yml"))
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    assert len(alerts) >= 4
    for name in alerts:
        assert f"alertname: {name}" in tested, f"alert {name} has no promtool unit test"
