"""Upload the committed dashboards (monitoring/dashboards/*.json) to Grafana; safe to run again and again.

    GRAFANA_URL=https://grafana.example.com GRAFANA_TOKEN=glsa_... python -m monitoring.upload [--folder-uid UID]

Idempotent: each dashboard keeps its uid and is saved with overwrite=True, so a rerun updates it in place (new
version in Grafana's history) instead of creating a copy. The token needs the dashboards:write permission
(a service account with the Editor role). Tested against a local fake HTTP server
(tests/unit/test_monitoring_dashboards.py), because no Grafana server can be installed where CI runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from grafana_client import GrafanaApi

from monitoring.dashboard import DASHBOARD_DIR

logger = logging.getLogger(__name__)


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def payload(dashboard: dict, folder_uid: str | None = None) -> dict:
    """The /api/dashboards/db body: no numeric id (Grafana matches on uid), overwrite whatever version is there."""
    body = {"dashboard": {**dashboard, "id": None}, "overwrite": True, "message": "monitoring.upload"}
    if folder_uid:
        body["folderUid"] = folder_uid
    return body


def upload(url: str, token: str, folder_uid: str | None = None, directory: Path = DASHBOARD_DIR) -> list[dict]:
    """Save every dashboard; returns Grafana's answers ({uid, url, version, status, ...})."""
    api = GrafanaApi.from_url(url, credential=token)
    answers = []
    for d in load_dashboards(directory):
        answer = api.dashboard.update_dashboard(payload(d, folder_uid))
        logger.info("%s (%s): %s, version %s", d["title"], d["uid"], answer.get("status"), answer.get("version"))
        answers.append(answer)
    return answers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("GRAFANA_URL"), help="Grafana base URL (env GRAFANA_URL)")
    parser.add_argument("--folder-uid", default=os.environ.get("GRAFANA_FOLDER_UID"), help="target folder uid")
    args = parser.parse_args(argv)
    token = os.environ.get("GRAFANA_TOKEN")
    if not args.url or not token:
        parser.error("set GRAFANA_URL (or --url) and GRAFANA_TOKEN (a service-account token)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    upload(args.url, token, args.folder_uid)


if __name__ == "__main__":
    main()
