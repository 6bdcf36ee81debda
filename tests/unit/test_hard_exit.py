"""tests/hard_exit.py ends the test process with pytest's own status once everything is reported.

Each case runs pytest in a child process on a throw-away test file, with the plugin, as `make test` runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.serve_harness import REPO

CASES = {
    "passes": ("def test_ok():\n    assert True\n", 0, "1 passed"),
    "fails": ("def test_broken():\n    assert False\n", 1, "1 failed"),
    "collects_nothing": ("", 5, "no tests ran"),
}
# Registered by the test module: it runs only if the interpreter tears itself down normally.
ATEXIT = "import atexit\natexit.register(lambda: print('interpreter teardown ran', flush=True))\n"


def _run(tmp_path, body: str, **env) -> subprocess.CompletedProcess:
    (tmp_path / "test_case.py").write_text(ATEXIT + body)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.hard_exit", "-p", "no:cacheprovider",
         "--junitxml", str(tmp_path / "junit.xml"), str(tmp_path / "test_case.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_the_exit_status_report_and_files_are_pytests_own(tmp_path, case):
    body, status, summary = CASES[case]
    out = _run(tmp_path, body)
    assert out.returncode == status, out.stdout + out.stderr
    assert summary in out.stdout
    assert (tmp_path / "junit.xml").is_file(), "pytest's own files are written before the process ends"
    assert "interpreter teardown ran" not in out.stdout, "the interpreter's teardown is skipped"


def test_natural_exit_can_be_asked_for(tmp_path):
    out = _run(tmp_path, CASES["fails"][0], ZIMAGE_TEST_NATURAL_EXIT="1")
    assert out.returncode == 1 and "interpreter teardown ran" in out.stdout, out.stdout + out.stderr
