"""The README's requests run verbatim against the CPU service started the way the README says.

Every shell command and Python block in README.md's "## Requests" section is extracted and run unchanged against
`serve run serve_config.cpu.yaml` (what `make serve` runs without a GPU) on the README's port, 8000. A command passes
when it exits 0 and everything it produced is what it promises: image files decode as the format their name says,
JSON files and JSON on stdout hold no `error`, a `-D -` header dump starts with a 200 status line. An example that
asks for more than the CPU config allows (e.g. a 1024 side) gets a 422 JSON body instead of an image and fails here.

Port 8000 must be free (the examples name it); the module fails at once, naming the port, when it is not.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.service

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PORT = 8000  # the README's port; changing it here without changing the README would defeat the test
BASE_URL = f"http://127.0.0.1:{PORT}"
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def requests_section(text: str) -> str:
    start = text.index("\n## Requests\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def code_blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.S)


def shell_commands(block: str) -> list[str]:
    """One entry per command: backslash continuations joined, comments and blank lines dropped."""
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line
        if line.endswith("\\"):
            current += "\n"
            continue
        commands.append(current)
        current = ""
    assert not current, f"dangling continuation in README block: {current!r}"
    return commands


def examples() -> list[pytest.param]:
    params = []
    for i, (lang, body) in enumerate(code_blocks(requests_section(README.read_text(encoding="utf-8")))):
        if lang == "bash":
            for j, cmd in enumerate(shell_commands(body)):
                params.append(pytest.param("bash", cmd, id=f"block{i}-cmd{j}"))
        else:
            params.append(pytest.param("python", body, id=f"block{i}-python"))
    return params


EXAMPLES = examples()


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def readme_service(tmp_path_factory):
    if port_in_use(PORT):
        pytest.fail(f"port {PORT} is in use; the README examples need it free (stop the other service)")
    log_path = tmp_path_factory.mktemp("serve_run") / "serve_run.log"
    # A fresh local cluster, as `make serve` on a machine without one; never a cluster someone else `ray start`ed.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["serve", "run", "serve_config.cpu.yaml"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown stops serve run and the Ray it started
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve run exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{BASE_URL}/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service not up on port {PORT} after 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield BASE_URL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # serve run shuts the app and its local Ray down on Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def check_image(path: Path) -> None:
    data = path.read_bytes()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as e:  # noqa: BLE001 - any decode failure means the example did not get an image
        pytest.fail(f"{path.name} is not an image ({e}); it starts with {data[:300]!r}")
    assert image.format == IMAGE_FORMATS[path.suffix.lower()], f"{path.name} is {image.format}"


def check_json(payload: str, origin: str) -> None:
    body = json.loads(payload)
    assert "error" not in body, f"{origin}: {body['error']}"
    for item in body.get("data", []):
        if "b64_json" in item:
            Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).load()


def check_outputs(workdir: Path, stdout: str) -> int:
    """Check everything the example produced; return how many things were checked."""
    checked = 0
    for path in sorted(workdir.iterdir()):
        if path.name == "example.py":
            continue
        if path.suffix.lower() in IMAGE_FORMATS:
            check_image(path)
        elif path.suffix == ".json":
            check_json(path.read_text(encoding="utf-8"), path.name)
        else:
            pytest.fail(f"unexpected output file {path.name}")
        checked += 1
    out = stdout.strip()
    if out.startswith("HTTP/"):
        status_line = out.splitlines()[0]
        assert status_line.split()[1] == "200", status_line
        checked += 1
    elif out.startswith("{"):
        check_json(out, "stdout")
        checked += 1
    return checked


def test_readme_has_examples():
    langs = [p.values[0] for p in EXAMPLES]
    assert langs.count("bash") >= 2 and langs.count("python") >= 1, langs
    section = requests_section(README.read_text(encoding="utf-8"))
    assert "localhost:8000" in section and "1024x1024" not in section


@pytest.mark.parametrize(("lang", "code"), EXAMPLES)
def test_readme_example_runs_verbatim(readme_service, tmp_path, lang, code):
    if lang == "bash":
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        (tmp_path / "example.py").write_text(code, encoding="utf-8")
        argv = [sys.executable, "example.py"]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{code}\nexit {result.returncode}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert check_outputs(tmp_path, result.stdout) >= 1, f"nothing to check from:\n{code}\n{result.stdout[:500]}"
