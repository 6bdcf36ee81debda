"""serve_config.yaml plus one GPU class's overrides -> the Serve config a RayService runs, checked before use.

Overrides are keyed by application and deployment name (not list position) and deep-merged, so an overlay says only
what differs (`user_config.max_batch_size: 4`). The result is validated by Ray's own `ServeDeploySchema` and by the
project's typed `AppConfig` / `GeneratorUserConfig`, so a typo fails at render time, not in the cluster.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deployments.config import AppConfig, GeneratorUserConfig, ModelSource

GPU_DEPLOYMENT = "Generator"


class OverrideError(ValueError):
    """An override names an application or deployment the serve config does not have."""


def load_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def deep_merge(base: Any, override: Any) -> Any:
    """Dicts merge key by key; anything else (lists, scalars) in `override` replaces the base value."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def apply_overrides(config: dict, overrides: dict) -> dict:
    """`overrides = {applications: {app_name: {..., deployments: {deployment_name: {...}}}}, <top-level keys>}`."""
    out = copy.deepcopy(config)
    apps_over = dict(overrides.get("applications") or {})
    for key, value in overrides.items():
        if key != "applications":
            out[key] = deep_merge(out.get(key), value) if key in out else copy.deepcopy(value)
    apps = {app["name"]: app for app in out.get("applications", [])}
    for app_name, app_over in apps_over.items():
        if app_name not in apps:
            raise OverrideError(f"override for unknown application {app_name!r} (have {sorted(apps)})")
        app_over = dict(app_over)
        deps_over = app_over.pop("deployments", {}) or {}
        app = apps[app_name]
        app.update(deep_merge(app, app_over))
        deployments = {d["name"]: d for d in app.get("deployments", [])}
        for dep_name, dep_over in deps_over.items():
            if dep_name not in deployments:
                raise OverrideError(
                    f"override for unknown deployment {app_name}/{dep_name} (have {sorted(deployments)})"
                )
            deployments[dep_name].update(deep_merge(deployments[dep_name], dep_over))
    return out


@dataclass(frozen=True)
class ClusterNeeds:
    """What the RayCluster must provide for this serve config: GPU workers and the weights to fetch."""

    min_workers: int
    max_workers: int
    model: str  # hub id, local dir or random:<arch> - what the init container fetches (or skips)
    revision: str


def validate(config: dict) -> None:
    """Raise if Ray Serve or the project's typed config would reject this serve config."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema  # Ray's own schema for `serve deploy` / serveConfigV2

    ServeDeploySchema.model_validate(config)
    known = set(getattr(AutoscalingConfig, "model_fields", None) or AutoscalingConfig.__fields__)
    for app in config["applications"]:
        AppConfig.model_validate(app.get("args") or {})
        for dep in app.get("deployments", []):
            # Serve ignores unknown autoscaling keys: a typo would silently fall back to the default.
            if unknown := set(dep.get("autoscaling_config") or {}) - known:
                raise ValueError(f"{app['name']}/{dep['name']}: unknown autoscaling_config keys {sorted(unknown)}")
            if dep["name"] == GPU_DEPLOYMENT:
                GeneratorUserConfig.model_validate(dep.get("user_config") or {})


def gpu_deployment(config: dict) -> tuple[dict, dict]:
    """(application, Generator deployment) of the only application that has the GPU deployment."""
    found = [(app, dep) for app in config["applications"] for dep in app.get("deployments", [])]
    found = [(app, dep) for app, dep in found if dep["name"] == GPU_DEPLOYMENT]
    if len(found) != 1:
        raise ValueError(f"expected exactly one {GPU_DEPLOYMENT} deployment, found {len(found)}")
    return found[0]


def cluster_needs(config: dict) -> ClusterNeeds:
    """One GPU per worker pod: the worker group spans the GPUs of min_replicas..max_replicas Generator replicas."""
    app, dep = gpu_deployment(config)
    gpus = float((dep.get("ray_actor_options") or {}).get("num_gpus", 0))
    if gpus <= 0:
        raise ValueError(f"{GPU_DEPLOYMENT} asks for no GPU (ray_actor_options.num_gpus)")
    auto = dep.get("autoscaling_config")
    lo, hi = (auto["min_replicas"], auto["max_replicas"]) if auto else (dep["num_replicas"], dep["num_replicas"])
    source = AppConfig.model_validate(app.get("args") or {}).model
    return ClusterNeeds(
        min_workers=math.ceil(lo * gpus),
        max_workers=math.ceil(hi * gpus),
        model=model_string(source),
        revision=source.revision or "",
    )


def model_string(source: ModelSource) -> str:
    if source.random is not None:
        return f"random:{source.random.value}"
    if source.local_dir is not None:
        return str(source.local_dir)
    return source.hub_id
