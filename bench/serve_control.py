"""Reconfigure a running Serve app live through the Serve REST API (what `serve deploy` does).

Only the Generator's `user_config` changes between PUTs, so Serve calls `reconfigure()` on the running replica (no
restart, no model reload). We check that it applied by reading `/info` (batching.desired/effective_max_batch) and
that the replica's pid did not change.
"""

from __future__ import annotations

import copy
import logging
import time

import httpx

logger = logging.getLogger(__name__)


def _submission_client(dashboard_url: str):
    """Ray's own client for the Serve REST API; it adds the cluster's auth token (Ray >= 2.5x enables token auth)."""
    try:  # outside a ray.init()'d process, pick up ~/.ray/auth_token the way the CLI does
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except Exception as exc:  # older/newer Ray: the client may still work without it
        logger.debug("token auth setup skipped: %s", exc)
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(dashboard_url)


class ServeControl:
    """Deploys a Serve config (dict) and changes one deployment's user_config live."""

    def __init__(
        self,
        dashboard_url: str,
        url: str,
        config: dict | None = None,
        app_name: str = "zimage",
        deployment: str = "Generator",
        auth_headers: dict | None = None,
    ):
        self.dashboard_url = dashboard_url
        self.url = url.rstrip("/")
        self.app_name = app_name
        self.deployment = deployment
        self.auth_headers = auth_headers or {}
        self._client = _submission_client(dashboard_url)
        self.config = copy.deepcopy(config) if config is not None else None

    # ---- REST ----------------------------------------------------------------------------------------------------
    def details(self) -> dict:
        return self._client.get_serve_details()

    def deploy(self, config: dict) -> None:
        self._client.deploy_applications(config)
        self.config = copy.deepcopy(config)

    def current_config(self) -> dict:
        """The config to modify: the one we deployed, else what the cluster says was last deployed declaratively."""
        if self.config is not None:
            return copy.deepcopy(self.config)
        details = self.details()
        apps = []
        for name, app in (details.get("applications") or {}).items():
            deployed = app.get("deployed_app_config")
            if deployed is None:
                raise RuntimeError(
                    f"application {name!r} was deployed with the Python API (serve.run); live reconfigure needs a "
                    "config deploy (`serve deploy` / `serve run config.yaml`), or pass --config"
                )
            apps.append(deployed)
        cfg = {"applications": apps}
        http = details.get("http_options") or {}
        cfg["http_options"] = {k: http[k] for k in ("host", "port", "root_path", "request_timeout_s") if k in http}
        if details.get("proxy_location"):
            cfg["proxy_location"] = details["proxy_location"]
        return cfg

    def _deployment_entry(self, cfg: dict) -> dict:
        apps = [a for a in cfg.get("applications", []) if a.get("name") == self.app_name]
        if not apps:
            raise RuntimeError(f"no application named {self.app_name!r} in the Serve config")
        deployments = apps[0].setdefault("deployments", [])
        for d in deployments:
            if d.get("name") == self.deployment:
                return d
        entry = {"name": self.deployment}
        deployments.append(entry)
        return entry

    # ---- service -------------------------------------------------------------------------------------------------
    def info(self, timeout_s: float = 30) -> dict:
        r = httpx.get(f"{self.url}/info", timeout=timeout_s, headers=self.auth_headers)
        r.raise_for_status()
        return r.json()

    def wait_ready(self, timeout_s: float = 600) -> dict:
        """Until /info answers (the Generator built its model and measured memory)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                return self.info(timeout_s=30)
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            status = self._app_status()
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"application {self.app_name} is {status}: {self._app_message()}")
            time.sleep(1.0)
        raise TimeoutError(f"{self.url}/info not ready after {timeout_s:.0f}s (last error: {last})")

    def _app(self) -> dict:
        try:
            return (self.details().get("applications") or {}).get(self.app_name) or {}
        except Exception as exc:  # the dashboard may still be starting
            logger.debug("serve details unavailable: %s", exc)
            return {}

    def _app_status(self) -> str | None:
        return self._app().get("status")

    def _app_message(self) -> str:
        app = self._app()
        msgs = [app.get("message") or ""]
        for name, dep in (app.get("deployments") or {}).items():
            if dep.get("message"):
                msgs.append(f"{name}: {dep['message']}")
        return " | ".join(m for m in msgs if m)[:2000]

    def apply_user_config(self, changes: dict, timeout_s: float = 120) -> dict:
        """PUT the config with `changes` merged into the Generator's user_config; wait until /info shows them.

        Returns the Generator's /info section after the change, with `restarted` = whether its pid changed.
        """
        before = self.info()["generator"]
        cfg = self.current_config()
        entry = self._deployment_entry(cfg)
        entry["user_config"] = {**(entry.get("user_config") or {}), **changes}
        self.deploy(cfg)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                gen = self.info()["generator"]
                uc = gen.get("user_config") or {}
                if all(uc.get(k) == v for k, v in changes.items()):
                    gen["restarted"] = gen.get("pid") != before.get("pid")
                    if gen["restarted"]:
                        logger.warning("the Generator replica restarted on reconfigure (pid changed): not live")
                    return gen
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                logger.debug("waiting for reconfigure: %s", exc)
            if time.monotonic() > deadline:
                raise TimeoutError(f"user_config change {changes} not visible in /info after {timeout_s:.0f}s")
            time.sleep(0.25)

    def set_max_batch_size(self, batch_size: int, timeout_s: float = 120) -> dict:
        # a fixed batch: the throughput policy fills it (the latency policy would run what is efficient)
        gen = self.apply_user_config({"max_batch_size": batch_size, "batch_policy": "throughput"}, timeout_s)
        b = gen["batching"]
        if b.get("desired_max_batch") != batch_size:
            raise RuntimeError(f"asked for max_batch_size={batch_size}, replica reports {b.get('desired_max_batch')}")
        if b.get("effective_max_batch") != batch_size:
            logger.warning(
                "max_batch_size=%d requested, effective %s (memory_cap=%s, oom_cap=%s)",
                batch_size,
                b.get("effective_max_batch"),
                b.get("memory_cap"),
                b.get("oom_cap"),
            )
        return gen
