"""perf's lever registry: every lever is listed with one command, prerequisites resolve, and a cheap lever runs end to
end on CPU with the tiny model (`--smoke`: checks the code path, not speed). GPU-only levers are skipped there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from perf.__main__ import main
from perf.levers import command, load_all, plan

REPO = Path(__file__).resolve().parents[2]


def test_every_lever_has_a_doc_a_command_and_known_prerequisites():
    levers = load_all()
    assert {"pipe", "runner", "compile", "fp8", "te_graphs", "profile", "torchao_fp8"} <= set(levers)
    for name, lv in levers.items():
        assert lv.doc and lv.name == name, name
        assert set(lv.after) <= set(levers), (name, lv.after)
        assert plan(name)[-1] == name and plan(name).count(name) == 1
    assert plan("profile") == ["runner", "compile", "profile"]
    assert plan("profile", ["runner", "fp8"]) == ["runner", "fp8", "profile"]
    assert command("fp8") == "python -m perf run fp8 --out fp8.json"


def test_unknown_levers_are_refused():
    with pytest.raises(KeyError):
        plan("no_such_lever")
    with pytest.raises(KeyError):
        plan("profile", ["runner", "no_such_lever"])
    assert main(["run", "no_such_lever", "--out", "/dev/null"]) == 2


def test_list_prints_every_lever_with_its_command(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in load_all():
        assert command(name) in text
    assert "python -m perf.cold_start" in text


def test_gpu_script_only_names_registered_levers():
    script = (REPO / "perf" / "run_gpu_perf.sh").read_text()
    named = set(re.findall(r"python -m perf run (\w+)", script))
    assert named and named <= set(load_all()), named - set(load_all())


def test_a_cheap_lever_runs_on_cpu_and_gpu_only_levers_are_skipped(tmp_path):
    out = tmp_path / "encode.json"
    args = ["run", "encode_padding", "--after", "runner", "compile", "--smoke", "--batch", "1", "--reps", "1"]
    cmd = [sys.executable, "-m", "perf", *args, "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=300, capture_output=True)
    result = json.loads(out.read_text())
    assert result["levers"] == ["runner", "compile", "encode_padding"]
    assert [r["lever"] for r in result["rows"]] == ["runner"] and result["rows"][0]["nan_latents"] == 0
    assert result["skipped"] == [{"lever": "compile", "why": "needs a GPU"}]
    assert result["encode_padding"][0]["batch"] == 1 and "errors" not in result
