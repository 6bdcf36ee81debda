"""Scan what `kubectl apply -k` sends with checkov's Kubernetes checks: `python -m k8s.scan [DIR...]`.

checkov does not know KubeRay's RayService, so each of its pod templates (head, every worker group) is also handed
to checkov as a Deployment carrying the template's metadata: the `checkov.io/skipN` annotations written on a pod
template in k8s/base/rayservice.yaml (each with its reason) are the only skips. The kustomization is built the way
docs/kubernetes.md deploys it: inside a namespace (`--namespace`), which every real deployment sets.
checkov comes from PyPI (`pip install checkov`, pinned in pyproject's `scan` extra); `make install` puts it in its
own virtual environment, because its pins would downgrade packages torch and Ray use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from k8s import K8S_DIR
from k8s.validate import kustomize_build, pod_templates

logger = logging.getLogger(__name__)

NAMESPACE = "zimage"
CHECKOV_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zimage-serve" / "checkov-venv"


class CheckovNotFound(RuntimeError):
    """No checkov executable: `make install` (or `pip install checkov` into any venv and set CHECKOV)."""


def checkov_exe() -> str:
    """$CHECKOV, then the venv `make install` creates, then PATH."""
    for candidate in (os.environ.get("CHECKOV"), str(CHECKOV_VENV / "bin" / "checkov"), shutil.which("checkov")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise CheckovNotFound(f"checkov not found: run `make install` (creates {CHECKOV_VENV}) or set CHECKOV")


def build_in_namespace(path: Path, namespace: str = NAMESPACE) -> list[dict]:
    """`kustomize build` of a one-line kustomization that puts `path` in `namespace` (docs/kubernetes.md step 3)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": namespace,
                    "resources": [os.path.relpath(path.resolve(), tmp)],
                }
            )
        )
        return kustomize_build(Path(tmp))


def scannable(docs: list[dict]) -> list[dict]:
    """The objects, plus each RayService pod template as a Deployment checkov understands."""
    out = list(docs)
    for svc in (d for d in docs if d.get("kind") == "RayService"):
        for role, template in pod_templates(svc).items():
            meta = template.get("metadata") or {}
            name = f"{svc['metadata']['name']}-{role.replace('/', '-')}"
            labels = meta.get("labels") or {"app": name}
            out.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {
                        "name": name,
                        "namespace": svc["metadata"].get("namespace"),
                        "labels": labels,
                        "annotations": meta.get("annotations") or {},
                    },
                    "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
                }
            )
    return out


@dataclass
class ScanResult:
    passed: int = 0
    failed: list[str] = field(default_factory=list)  # "CHECK_ID resource: name"
    skipped: list[str] = field(default_factory=list)  # "CHECK_ID resource: reason"


def scan(docs: list[dict], exe: str | None = None) -> ScanResult:
    """Run checkov once over `docs` (one YAML file in a temporary folder)."""
    exe = exe or checkov_exe()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rendered.yaml").write_text(yaml.safe_dump_all(scannable(docs), sort_keys=False))
        cmd = [exe, "-d", tmp, "--framework", "kubernetes", "-o", "json"]
        cmd += ["--skip-download"]  # no Prisma Cloud: the checks bundled with checkov only
        env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        raise RuntimeError(f"checkov failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    report = json.loads(out.stdout)
    reports = report if isinstance(report, list) else [report]
    result = ScanResult()
    for r in reports:
        if r.get("summary", {}).get("parsing_errors"):
            raise RuntimeError(f"checkov could not parse the rendered objects: {r['summary']}")
        res = r.get("results", {})
        result.passed += len(res.get("passed_checks", []))
        result.failed += [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in res.get("failed_checks", [])]
        result.skipped += [
            f"{c['check_id']} {c['resource']}: {(c.get('check_result') or {}).get('suppress_comment', '')}"
            for c in res.get("skipped_checks", [])
        ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="kustomization folders (default: base and overlays)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dirs = args.dirs or [
        K8S_DIR / "base",
        *sorted(p.parent for p in (K8S_DIR / "overlays").glob("*/kustomization.yaml")),
    ]
    failed = 0
    for path in dirs:
        result = scan(build_in_namespace(path))
        for line in result.failed:
            logger.error("%s: FAILED %s", path, line)
        for line in result.skipped:
            logger.info("%s: skipped %s", path, line)
        logger.info(
            "%s: %d passed, %d failed, %d skipped", path, result.passed, len(result.failed), len(result.skipped)
        )
        failed += bool(result.failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
