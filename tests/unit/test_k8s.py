"""KubeRay manifests: what `kubectl apply -k` would send, checked without a cluster.

Every kustomization is built by the real kustomize (the one embedded in kubectl) and validated against the vendored
KubeRay RayService CRD schema, the PodMonitor CRD schema (subset) and upstream Kubernetes schemas
(`kubernetes-validate`). Then the semantics: serveConfigV2 IS serve_config.yaml (plus the overlay's overrides), the
GPU worker group follows Serve's autoscaling bounds, Ray versions agree, the head is CPU-only, secrets are references.
No fakes; nothing here needs a Kubernetes or Ray cluster.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import tomllib
from pathlib import Path

import pydantic
import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from k8s import K8S_DIR, REPO_ROOT, dashboards, render, validate
from k8s.serve_config import OverrideError, apply_overrides, cluster_needs, load_yaml

BASE = K8S_DIR / "base"
OVERLAYS = render.overlays(REPO_ROOT)
APP_DIRS = [BASE, *OVERLAYS]
APP_IDS = [p.name for p in APP_DIRS]
SERVE_CONFIG = load_yaml(REPO_ROOT / "serve_config.yaml")


@functools.cache
def build(path: Path) -> tuple[dict, ...]:
    return tuple(validate.kustomize_build(path))


def rayservice(path: Path) -> dict:
    (svc,) = [d for d in build(path) if d["kind"] == "RayService"]
    return svc


def served_config(path: Path) -> dict:
    return yaml.safe_load(rayservice(path)["spec"]["serveConfigV2"])


def cluster(path: Path) -> dict:
    return rayservice(path)["spec"]["rayClusterConfig"]


def worker_group(path: Path) -> dict:
    (group,) = cluster(path)["workerGroupSpecs"]
    return group


def container(template: dict, name: str, init: bool = False) -> dict:
    (found,) = [c for c in template["spec"]["initContainers" if init else "containers"] if c["name"] == name]
    return found


def head(path: Path) -> dict:
    return container(cluster(path)["headGroupSpec"]["template"], "ray-head")


def worker(path: Path) -> dict:
    return container(worker_group(path)["template"], "ray-worker")


def fetcher(path: Path) -> dict:
    return container(worker_group(path)["template"], "fetch-weights", init=True)


def env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def deployment(config: dict, name: str) -> dict:
    (dep,) = [d for app in config["applications"] for d in app.get("deployments", []) if d["name"] == name]
    return dep


# ---- build + schema validation ------------------------------------------------------------------------------------
def test_overlay_per_gpu_class():
    assert {p.name for p in OVERLAYS} == {"gpu-24gb", "a100", "h100"}


@pytest.mark.parametrize("path", validate.kustomizations(), ids=lambda p: str(p.relative_to(K8S_DIR)))
def test_kustomization_builds_and_validates(path):
    docs = build(path)
    assert docs, f"{path} built no objects"
    assert validate.validate_documents(list(docs)) == []


def _set(path: list, value):
    def mutate(obj):
        node = obj
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _pop(path: list):
    def mutate(obj):
        node = obj
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


RC = ["spec", "rayClusterConfig"]
HEAD_C = [*RC, "headGroupSpec", "template", "spec", "containers", 0]
WORKER_G = [*RC, "workerGroupSpecs", 0]
WORKER_C = [*WORKER_G, "template", "spec", "containers", 0]
MUTATIONS = {
    "unknown RayService field": ("RayService", _set([*RC, "enableInTreeAutoscale"], True), "was unexpected"),
    "replica count as string": ("RayService", _set([*WORKER_G, "maxReplicas"], "4"), "is not of type 'integer'"),
    "rayStartParams value not a string": (
        "RayService",
        _set([*RC, "headGroupSpec", "rayStartParams", "num-cpus"], 0),
        "is not of type 'string'",
    ),
    "container without name": ("RayService", _pop([*HEAD_C, "name"]), "'name' is a required property"),
    "bad memory quantity": (
        "RayService",
        _set([*WORKER_C, "resources", "limits", "memory"], "28 GB"),
        "does not match",
    ),
    "typo in pod spec": ("RayService", _set([*WORKER_C, "imagePullPolcy"], "Always"), "was unexpected"),
    "missing serveConfigV2 type": ("RayService", _set(["spec", "serveConfigV2"], {"a": 1}), "is not of type 'string'"),
    "uppercase name": ("RayService", _set(["metadata", "name"], "Zimage"), "DNS-1123"),
    "PVC field typo": ("PersistentVolumeClaim", _set(["spec", "accesModes"], ["ReadWriteMany"]), "was unexpected"),
    "PVC bad size": ("PersistentVolumeClaim", _set(["spec", "resources", "requests", "storage"], "lots"), "quantity"),
    "PodMonitor field typo": ("PodMonitor", _set(["spec", "podMetricEndpoints"], []), "was unexpected"),
    "PodMonitor bad interval": (
        "PodMonitor",
        _set(["spec", "podMetricsEndpoints", 0, "interval"], "15 seconds"),
        "does not match",
    ),
    "PodMonitor without selector": ("PodMonitor", _pop(["spec", "selector"]), "'selector' is a required property"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_validation_rejects_broken_manifest(name):
    """The validators can fail: each mutation of a valid object is caught, with the right reason."""
    kind, mutate, expected = MUTATIONS[name]
    docs = build(K8S_DIR / "overlays" / "h100") + build(K8S_DIR / "monitoring")
    obj = copy.deepcopy(next(d for d in docs if d["kind"] == kind))
    assert validate.validate_object(obj) == []
    mutate(obj)
    errors = validate.validate_object(obj)
    assert any(expected in e for e in errors), errors


def test_references_must_resolve():
    docs = [copy.deepcopy(d) for d in build(BASE)]
    svc = next(d for d in docs if d["kind"] == "RayService")
    template = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    template["volumes"][0]["persistentVolumeClaim"]["claimName"] = "elsewhere"
    container(svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"], "ray-worker")["env"][-1]["valueFrom"][
        "secretKeyRef"
    ]["optional"] = False
    errors = validate.reference_errors(docs)
    assert any("'elsewhere'" in e for e in errors) and any("needs Secret hf-token" in e for e in errors), errors


# ---- serveConfigV2: one source of truth ---------------------------------------------------------------------------
def test_generated_patches_are_current():
    stale = render.stale(REPO_ROOT)
    assert stale == [], f"stale generated files {stale}: run `python -m k8s.render`"


def _copy_tree(tmp_path: Path) -> Path:
    shutil.copy(REPO_ROOT / "serve_config.yaml", tmp_path / "serve_config.yaml")
    shutil.copytree(K8S_DIR, tmp_path / "k8s", ignore=shutil.ignore_patterns("schemas", "__pycache__", "*.py"))
    return tmp_path


def test_drift_is_detected_and_rerender_fixes_it(tmp_path):
    root = _copy_tree(tmp_path)
    config = load_yaml(root / "serve_config.yaml")
    deployment(config, "Generator")["autoscaling_config"]["max_replicas"] = 6
    (root / "serve_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert len(render.stale(root)) == 1 + len(OVERLAYS)
    assert render.main(["--check", "--root", str(root)]) == 1
    assert render.main(["--root", str(root)]) == 0
    assert render.main(["--check", "--root", str(root)]) == 0
    (built,) = [d for d in validate.kustomize_build(root / "k8s" / "overlays" / "h100") if d["kind"] == "RayService"]
    assert built["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 6


BASE_OVERRIDES = load_yaml(BASE / render.OVERRIDES_NAME)


def test_base_serve_config_v2_is_serve_config_yaml_plus_k8s_overrides():
    served = served_config(BASE)
    assert served == apply_overrides(SERVE_CONFIG, BASE_OVERRIDES)
    # The k8s-wide overrides touch only the app args they name; everything else is serve_config.yaml verbatim.
    (app,), (source_app,) = served["applications"], SERVE_CONFIG["applications"]
    named = set(BASE_OVERRIDES["applications"]["zimage"]["args"])
    assert {k: v for k, v in app["args"].items() if k not in named} == {
        k: v for k, v in source_app["args"].items() if k not in named
    }
    assert {k: v for k, v in app.items() if k != "args"} == {k: v for k, v in source_app.items() if k != "args"}
    assert {k: v for k, v in served.items() if k != "applications"} == {
        k: v for k, v in SERVE_CONFIG.items() if k != "applications"
    }


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_serve_config_v2_is_source_plus_overrides(overlay):
    overrides = load_yaml(overlay / render.OVERRIDES_NAME)
    served = served_config(overlay)
    assert served == apply_overrides(apply_overrides(SERVE_CONFIG, BASE_OVERRIDES), overrides)
    assert served != served_config(BASE), "an overlay without effective overrides is the base"
    user_over = overrides["applications"]["zimage"]["deployments"]["Generator"]["user_config"]
    served_user = deployment(served, "Generator")["user_config"]
    assert {k: served_user[k] for k in user_over} == user_over


def test_override_of_unknown_deployment_fails():
    with pytest.raises(OverrideError, match="Generatr"):
        apply_overrides(SERVE_CONFIG, {"applications": {"zimage": {"deployments": {"Generatr": {"num_replicas": 1}}}}})


def test_invalid_user_config_override_fails_render(tmp_path):
    root = _copy_tree(tmp_path)
    bad = {"applications": {"zimage": {"deployments": {"Generator": {"user_config": {"max_batch_size": 0}}}}}}
    (root / "k8s" / "overlays" / "h100" / render.OVERRIDES_NAME).write_text(yaml.safe_dump(bad))
    with pytest.raises(pydantic.ValidationError, match="max_batch_size"):
        render.generate(root)


def test_autoscaling_typo_fails_render(tmp_path):
    """Serve itself ignores unknown autoscaling keys; the render does not."""
    root = _copy_tree(tmp_path)
    bad = {"applications": {"zimage": {"deployments": {"Generator": {"autoscaling_config": {"target_ongoing": 4}}}}}}
    (root / "k8s" / "overlays" / "gpu-24gb" / render.OVERRIDES_NAME).write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="target_ongoing"):
        render.generate(root)


def test_kustomize_patch_guards_the_base_layout(tmp_path):
    """The generated patch `test`s the worker group it edits: renaming it in the base breaks the build, loudly."""
    root = _copy_tree(tmp_path)
    base = root / "k8s" / "base" / "rayservice.yaml"
    base.write_text(base.read_text().replace("groupName: gpu", "groupName: gpus"))
    with pytest.raises(RuntimeError, match="test failed"):
        validate.kustomize_build(root / "k8s" / "overlays" / "a100")


# ---- cluster shape ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_gpu_workers_follow_serve_autoscaling(path):
    config, group = served_config(path), worker_group(path)
    needs = cluster_needs(config)
    auto = deployment(config, "Generator")["autoscaling_config"]
    assert (group["minReplicas"], group["maxReplicas"]) == (auto["min_replicas"], auto["max_replicas"])
    assert group["replicas"] == group["minReplicas"] == needs.min_workers  # an upgrade's new cluster starts here
    assert cluster(path)["enableInTreeAutoscaling"] is True
    assert rayservice(path)["spec"]["upgradeStrategy"]["type"] == "NewCluster"


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_one_gpu_per_worker_and_room_for_the_replicas(path):
    config, c = served_config(path), worker(path)
    gen, ingress = deployment(config, "Generator"), deployment(config, "Ingress")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert gen["ray_actor_options"]["num_gpus"] == 1
    # The head has no logical CPUs, so the first worker must hold a Generator and every Ingress replica.
    need = gen["ray_actor_options"]["num_cpus"] + ingress["num_replicas"] * ingress["ray_actor_options"]["num_cpus"]
    assert int(c["resources"]["limits"]["cpu"]) >= need
    tolerations = worker_group(path)["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_pins_gpu_type(overlay):
    terms = worker_group(overlay)["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    keys = {e["key"] for t in terms for e in t["matchExpressions"]}
    assert "nvidia.com/gpu.product" in keys and all(e["values"] for t in terms for e in t["matchExpressions"])


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_head_is_cpu_only(path):
    params, c = cluster(path)["headGroupSpec"]["rayStartParams"], head(path)
    assert params["num-cpus"] == "0" and params["num-gpus"] == "0"
    assert not any("gpu" in k for part in c["resources"].values() for k in part)
    assert "tolerations" not in cluster(path)["headGroupSpec"]["template"]["spec"]
    assert rayservice(path)["spec"]["excludeHeadPodFromServeSvc"] is True


def test_ray_version_matches_pin_images_and_dockerfile():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["dependencies"] if d.startswith("ray[")]
    dockerfile = (K8S_DIR / "Dockerfile").read_text()
    (arg,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)
    (base_image,) = re.findall(r"^FROM (\S+)$", dockerfile, re.M)
    python_tag = re.fullmatch(r"rayproject/ray:\$\{RAY_VERSION\}-py3(\d+)-gpu", base_image)
    assert python_tag, base_image
    assert Version(f"3.{python_tag.group(1)}") in SpecifierSet(project["requires-python"])
    for path in APP_DIRS:
        version = cluster(path)["rayVersion"]
        assert version in SpecifierSet(pin.split("]", 1)[1]) and version == arg
        # The tests' own Ray (which validated serveConfigV2) is the image's minor release.
        assert Version(ray.__version__).release[:2] == Version(version).release[:2]
        images = {c["image"] for c in (head(path), worker(path), fetcher(path))}
        assert len(images) == 1 and images.pop().endswith(f"-ray{version}")


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_latency_buckets_match_makefile(path):
    (buckets,) = re.findall(r"RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS \?= (\S+)", (REPO_ROOT / "Makefile").read_text())
    for c in (head(path), worker(path)):
        assert env(c)["RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS"]["value"] == buckets


# ---- weights cache and secrets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_weights_cached_on_shared_pvc(path):
    (pvc,) = [d for d in build(path) if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = {v["name"]: v for v in worker_group(path)["template"]["spec"]["volumes"]}
    (cache,) = [
        n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]
    ]
    for c in (worker(path), fetcher(path)):
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts[cache] == env(c)["HF_HOME"]["value"]
    assert env(worker(path))["HF_HUB_OFFLINE"]["value"] == "1"
    needs = cluster_needs(served_config(path))
    assert env(fetcher(path))["ZIMAGE_MODEL"]["value"] == needs.model == "Tongyi-MAI/Z-Image-Turbo"


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_compile_cache_on_shared_pvc(path):
    """A compiled replica's Inductor cache must outlive the pod, or every scale-up compiles again."""
    (app,) = served_config(path)["applications"]
    if not app["args"].get("compile"):
        pytest.skip("serve config does not compile")
    mounts = {m["name"]: m["mountPath"] for m in worker(path)["volumeMounts"]}
    assert Path(app["args"]["compile_cache_dir"]).is_relative_to(mounts["hf-cache"])


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_hf_token_only_from_optional_secret(path):
    docs = build(path)
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by hand, never shipped"
    templates = validate.pod_templates(rayservice(path)).values()
    containers = [c for t in templates for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])]
    for c in containers:
        for e in c.get("env", []):
            if re.search(r"TOKEN|KEY|PASSWORD|SECRET", e["name"]):
                assert "value" not in e, f"{c['name']}: {e['name']} inline"
    ref = env(fetcher(path))["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "hf-token", "key": "token", "optional": True}
    assert env(worker(path))["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == ref


# ---- monitoring ---------------------------------------------------------------------------------------------------
def _ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_metrics_port_on_head_and_workers(path):
    for c, params in ((head(path), cluster(path)["headGroupSpec"]), (worker(path), worker_group(path))):
        assert _ports(c)["metrics"] == 8080 == int(params["rayStartParams"]["metrics-export-port"])
    env_head = env(head(path))
    for var in ("RAY_GRAFANA_HOST", "RAY_PROMETHEUS_HOST", "RAY_GRAFANA_IFRAME_HOST"):
        assert re.fullmatch(r"https?://[^\s/]+(:\d+)?/?", env_head[var]["value"]), var


def test_pod_monitors_scrape_ports_the_pods_have():
    monitors = [d for d in build(K8S_DIR / "monitoring") if d["kind"] == "PodMonitor"]
    pods = {
        "head": (cluster(BASE)["headGroupSpec"]["template"], head(BASE)),
        "worker": (worker_group(BASE)["template"], worker(BASE)),
    }
    scraped = set()
    for monitor in monitors:
        want = monitor["spec"]["selector"]["matchLabels"]
        matching = [
            role
            for role, (template, _) in pods.items()
            if want.items() <= {**template["metadata"]["labels"], "ray.io/node-type": role}.items()
        ]
        assert len(matching) == 1, (monitor["metadata"]["name"], matching)
        ports = _ports(pods[matching[0]][1])
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports, (monitor["metadata"]["name"], endpoint["port"])
        scraped.add(matching[0])
    assert scraped == {"head", "worker"}


def _dashboard(title: str) -> dict:
    return {"title": title, "uid": title.lower(), "panels": [{"type": "timeseries", "title": "p", "targets": []}]}


def test_dashboard_configmaps_from_whatever_json_exists(tmp_path):
    (tmp_path / "Serve Overview.json").write_text(json.dumps(_dashboard("Serve")))
    (tmp_path / "gpu.json").write_text(json.dumps(_dashboard("GPU"), indent=2))
    (tmp_path / "notes.txt").write_text("ignored")
    maps = dashboards.configmaps(tmp_path)
    assert [m["metadata"]["name"] for m in maps] == ["zimage-dashboard-serve-overview", "zimage-dashboard-gpu"]
    for m, title in zip(maps, ["Serve", "GPU"], strict=True):
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        (text,) = m["data"].values()
        assert json.loads(text)["title"] == title
        assert validate.validate_object(m) == []
    assert list(yaml.safe_load_all(dashboards.render(tmp_path))) == maps
    real = dashboards.configmaps()  # the project's own dashboards, however many exist now
    assert len(real) == len(list(dashboards.DASHBOARDS_DIR.glob("*.json")))
    assert all(validate.validate_object(m) == [] for m in real)


def test_dashboard_generator_rejects_non_dashboards(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(dashboards.DashboardError, match="not JSON"):
        dashboards.configmaps(tmp_path)
    (tmp_path / "broken.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(dashboards.DashboardError, match="not a Grafana dashboard"):
        dashboards.configmaps(tmp_path)
