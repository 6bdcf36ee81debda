"""Grafana dashboards as ConfigMaps for Grafana's dashboard sidecar: `python -m k8s.dashboards [--out FILE]`.

Reads whatever `monitoring/dashboards/*.json` holds (one ConfigMap per dashboard, labelled `grafana_dashboard: "1"`,
which kube-prometheus-stack's sidecar watches) and prints a multi-document YAML to apply with
`kubectl apply --server-side`. Nothing is committed, so the dashboards JSON stays the only copy. One ConfigMap per
dashboard keeps each far below the 1 MiB object limit; server-side apply avoids the 256 KiB annotation limit of
client-side apply.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import yaml

from k8s import REPO_ROOT

logger = logging.getLogger(__name__)

DASHBOARDS_DIR = REPO_ROOT / "monitoring" / "dashboards"
SIDECAR_LABEL = {"grafana_dashboard": "1"}
MAX_CONFIGMAP_BYTES = 1024 * 1024  # etcd object limit (data + metadata); stay well below
FOLDER = "Z-Image"


class DashboardError(ValueError):
    """A file in the dashboards folder is not a Grafana dashboard JSON."""


def configmap_name(path: Path) -> str:
    """DNS-1123 name from the file name: `serve-overview.json` -> `zimage-dashboard-serve-overview`."""
    stem = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")
    return f"zimage-dashboard-{stem}"[:63].rstrip("-")


def dashboard_configmap(path: Path) -> dict:
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DashboardError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(dashboard, dict) or "panels" not in dashboard or "title" not in dashboard:
        raise DashboardError(f"{path}: not a Grafana dashboard (needs `title` and `panels`)")
    text = json.dumps(dashboard, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > MAX_CONFIGMAP_BYTES // 2:
        raise DashboardError(f"{path}: {len(text.encode())} bytes is too large for one ConfigMap")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(path),
            "labels": {**SIDECAR_LABEL, "app.kubernetes.io/name": "zimage-serve"},
            # Honoured when the sidecar runs with folderAnnotation=grafana_folder (kube-prometheus-stack option).
            "annotations": {"grafana_folder": FOLDER},
        },
        "data": {path.name: text},
    }


def configmaps(folder: Path = DASHBOARDS_DIR) -> list[dict]:
    """One ConfigMap per `*.json` in `folder`, sorted by file name; [] when there are none yet."""
    maps = [dashboard_configmap(p) for p in sorted(folder.glob("*.json"))]
    names = [m["metadata"]["name"] for m in maps]
    if len(set(names)) != len(names):
        raise DashboardError(f"dashboard file names map to the same ConfigMap name: {names}")
    return maps


def render(folder: Path = DASHBOARDS_DIR) -> str:
    return yaml.safe_dump_all(configmaps(folder), sort_keys=False, width=1_000_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DASHBOARDS_DIR, help="folder of dashboard JSON files")
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    text = render(args.dir)
    if not text.strip():
        logger.warning("no dashboards in %s: nothing to apply", args.dir)
    if args.out:
        args.out.write_text(text)
        logger.info("wrote %s", args.out)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
