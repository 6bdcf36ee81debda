"""Start a private local Ray cluster (with dashboard) and deploy a Serve config file through the REST API.

Config deploys (unlike `serve.run(app)`) keep a stable code version, so a later PUT that only changes user_config
reconfigures the running replica instead of restarting it. The cluster is this process's own (`address="local"`):
it never attaches to, or stops, other clusters on the machine.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.serve_control import ServeControl

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Service:
    url: str
    dashboard_url: str
    control: ServeControl
    startup_info: dict


def load_config(source: str | Path | dict, http_port: int | None = None, host: str = "127.0.0.1") -> dict:
    """A Serve config file (or an already-loaded dict) with the HTTP host/port overridden."""
    cfg = copy.deepcopy(source) if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())
    http = cfg.setdefault("http_options", {})
    http["host"] = host
    if http_port is not None:
        http["port"] = http_port
    http.setdefault("port", 8000)
    return cfg


@contextmanager
def launched_service(
    config_path: str | Path | dict,
    http_port: int | None = None,
    dashboard_port: int = 8265,
    num_cpus: int | None = None,
    ready_timeout_s: float = 900,
    logs_to: Path | None = None,
) -> Iterator[Service]:
    import ray
    from ray import serve

    cfg = load_config(config_path, http_port)
    port = cfg["http_options"]["port"]
    # Replicas import `deployments` from this checkout; Ray workers inherit the driver's environment.
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": cfg["http_options"]["host"], "port": port})
        dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        url = f"http://127.0.0.1:{port}"
        control = ServeControl(dashboard_url, url)
        logger.info("deploying %s (http %s, dashboard %s)", _name(config_path), url, dashboard_url)
        control.deploy(cfg)
        info = control.wait_ready(ready_timeout_s)
        logger.info("service ready: %s on %s", info.get("model_source"), (info.get("generator") or {}).get("device"))
        yield Service(url=url, dashboard_url=dashboard_url, control=control, startup_info=info)
    finally:
        if logs_to is not None:
            _copy_serve_logs(logs_to)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _name(source) -> str:
    return "a config dict" if isinstance(source, dict) else str(source)


def _copy_serve_logs(dest: Path, max_bytes: int = 2_000_000) -> None:
    """Keep the tail of each Serve log next to the results (a failed GPU run is debugged from these)."""
    try:
        import ray

        session = Path(ray._private.worker._global_node.get_session_dir_path())
    except Exception as exc:
        logger.warning("could not locate the Ray session dir for logs: %s", exc)
        return
    src = session / "logs" / "serve"
    if not src.is_dir():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.log")):
        data = f.read_bytes()[-max_bytes:]
        (dest / f.name).write_bytes(data)
