"""KubeRay manifests: what `kubectl apply -k` would send, checked without a cluster.

Every kustomization is built by the real kustomize (the one embedded in kubectl) and validated against the vendored
KubeRay RayService CRD schema, the PodMonitor CRD schema (subset) and upstream Kubernetes schemas
(`kubernetes-validate`). Then the semantics: serveConfigV2 IS serve_config.yaml (plus the overlay's overrides), the
GPU worker group follows Serve's autoscaling bounds, Ray versions and the image lock agree, the head is CPU-only,
secrets are references, pods are hardened (checkov, from PyPI, on every rendered overlay: zero failed checks), the
shutdown numbers cover Serve's drain, the PrometheusRule is the rules file.
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

from deployments.app import GENERATOR_DEFAULTS, INGRESS_DEFAULTS
from k8s import K8S_DIR, REPO_ROOT, dashboards, render, scan, validate
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
    assert {p.name for p in OVERLAYS} == {"gpu-24gb", "a100", "h100", "h200"}


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
    shutil.copytree(REPO_ROOT / render.RULES_DIR, tmp_path / render.RULES_DIR)
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


def test_prometheus_rule_is_the_rules_file(tmp_path):
    """One source: the PrometheusRule's groups are monitoring/'s promtool-tested rules file, and drift is caught."""
    (rule,) = [d for d in build(K8S_DIR / "monitoring") if d["kind"] == "PrometheusRule"]
    (rules_file,) = sorted((REPO_ROOT / render.RULES_DIR).glob("*.yml"))
    assert rule["spec"] == load_yaml(rules_file)
    assert rule["metadata"]["labels"]["release"] == "prometheus"  # the label the PodMonitors carry too
    root = _copy_tree(tmp_path)
    edited = root / render.RULES_DIR / rules_file.name
    edited.write_text(edited.read_text().replace("for: 10m", "for: 15m", 1))
    assert render.stale(root) == [root / render.PROMETHEUS_RULE]


# ---- GPU classes ----------------------------------------------------------------------------------------------------
GPU_PRODUCTS = {  # nvidia.com/gpu.product (GPU feature discovery) values each overlay must accept
    "gpu-24gb": {"NVIDIA-L4", "NVIDIA-A10G"},
    "a100": {"NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"},
    "h100": {"NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"},
    "h200": {"NVIDIA-H200", "NVIDIA-H200-NVL"},
}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_accepts_every_card_of_its_class(overlay):
    terms = worker_group(overlay)["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    values = {k: set(e["values"]) for t in terms for e in t["matchExpressions"] for k in [e["key"]]}
    assert GPU_PRODUCTS[overlay.name] <= values["nvidia.com/gpu.product"]
    assert {"cloud.google.com/gke-accelerator", "karpenter.k8s.aws/instance-gpu-name"} <= set(values)


# ---- pod security (checkov) ---------------------------------------------------------------------------------------
def _containers(path: Path):
    for role, template in validate.pod_templates(rayservice(path)).items():
        for c in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            yield role, template, c


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_every_container_is_hardened_and_sized(path):
    for role, template, c in _containers(path):
        where = f"{role}/{c['name']}"
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True, where
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        pod = template["spec"]["securityContext"]
        assert (
            pod["runAsNonRoot"] is True and pod["runAsUser"] != 0 and pod["seccompProfile"]["type"] == "RuntimeDefault"
        )
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), where
        # Read-only root: Ray's session dir and the caches must land on writable volumes.
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        assert "emptyDir" in mounts["/tmp"], where
        assert env(c)["XDG_CACHE_HOME"]["value"].startswith("/tmp/"), where
    assert cluster(path)["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] is False


@functools.cache
def _scan(path: Path) -> scan.ScanResult:
    return scan.scan(scan.build_in_namespace(path))


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_checkov_passes_every_rendered_overlay(path):
    """checkov's Kubernetes checks on what `kubectl apply -k` sends (pod templates as Deployments): nothing fails;
    a skip exists only as an annotation on a pod template, with its reason."""
    result = _scan(path)
    assert result.failed == [], "\n".join(result.failed)
    assert result.passed > 100
    for line in result.skipped:
        reason = line.split(": ", 1)[1]
        assert len(reason) > 40, f"skip without a real reason: {line}"
    skipped = {line.split()[0] for line in result.skipped}
    assert skipped <= {"CKV_K8S_43", "CKV_K8S_40", "CKV_K8S_38", "CKV_K8S_35"}, skipped


def test_checkov_fails_an_unhardened_pod():
    """The scan can fail: the worker without its security context and probes is caught."""
    docs = [copy.deepcopy(d) for d in scan.build_in_namespace(K8S_DIR / "overlays" / "h100")]
    svc = next(d for d in docs if d["kind"] == "RayService")
    c = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    for key in ("securityContext", "readinessProbe", "livenessProbe"):
        del c[key]
    failed = {line.split()[0] for line in scan.scan(docs).failed}
    assert {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_28", "CKV_K8S_9", "CKV_K8S_8"} <= failed, failed


# ---- shutdown, disruption, probes -----------------------------------------------------------------------------------
def _graceful_shutdown_s(config: dict) -> int:
    """The longest drain Serve gives a replica: the served config's value, else deployments/app.py's default."""
    defaults = {"Generator": GENERATOR_DEFAULTS, "Ingress": INGRESS_DEFAULTS}
    return max(
        deployment(config, name).get("graceful_shutdown_timeout_s", d["graceful_shutdown_timeout_s"])
        for name, d in defaults.items()
    )


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_termination_grace_covers_serve_drain(path):
    drain = _graceful_shutdown_s(served_config(path))
    spec, c = worker_group(path)["template"]["spec"], worker(path)
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:2] == ["python", "-c"]
    compile(pre_stop[2], "preStop", "exec")  # the hook is valid Python
    assert "drain-node" in pre_stop[2] and "ServeReplica" in pre_stop[2]
    budget = int(pre_stop[3])
    assert budget >= drain + 20, f"preStop waits {budget} s, Serve drains for {drain} s (+ the drain request)"
    # After preStop, Kubernetes sends SIGTERM; Ray needs a few seconds to exit before SIGKILL.
    assert spec["terminationGracePeriodSeconds"] >= budget + 15
    assert env(c)["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_disruption_budget_covers_gpu_workers_only(path):
    (pdb,) = [d for d in build(path) if d["kind"] == "PodDisruptionBudget"]
    want = pdb["spec"]["selector"]["matchLabels"]
    assert want.items() <= worker_group(path)["template"]["metadata"]["labels"].items()
    assert not want.items() <= cluster(path)["headGroupSpec"]["template"]["metadata"]["labels"].items()
    # maxUnavailable 1: one eviction at a time, never blocked forever with the usual single warm worker.
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    assert rayservice(path)["spec"]["upgradeStrategy"]["type"] == "NewCluster"  # deletes pods: not PDB-gated


def _probe_cmd(c: dict, kind: str) -> str:
    return c[kind]["exec"]["command"][-1]


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_probes_replace_kuberays_with_the_same_checks(path):
    """Readiness of a worker: the raylet AND the node's Serve proxy (healthy only while the node hosts a RUNNING
    replica, i.e. one whose reconfigure() loaded and warmed the pipeline). Liveness: the raylet alone, cheap."""
    port = served_config(path)["http_options"]["port"]
    c = worker(path)
    assert _ports(c)["serve"] == port
    ready, live = _probe_cmd(c, "readinessProbe"), _probe_cmd(c, "livenessProbe")
    assert "localhost:52365/api/local_raylet_healthz" in ready and f"localhost:{port}/-/healthz" in ready
    assert "local_raylet_healthz" in live and f":{port}" not in live
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] >= 300  # no restart storms
    h = head(path)
    for kind in ("readinessProbe", "livenessProbe"):
        assert "gcs_healthz" in _probe_cmd(h, kind) and "local_raylet_healthz" in _probe_cmd(h, kind)
    assert "initContainers" not in cluster(path)["headGroupSpec"]["template"]["spec"]


# ---- auth ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_ray_token_auth_and_service_key_from_secret(path):
    assert cluster(path)["authOptions"] == {"mode": "token"}
    (app,) = served_config(path)["applications"]
    key_env = app["args"]["api_key_env"]
    ref = env(worker(path))[key_env]["valueFrom"]["secretKeyRef"]
    assert ref["name"] in validate.REQUIRED_SECRETS and ref.get("optional") is not True  # no key: no start
    assert key_env not in env(head(path))  # no Serve replica on the head


@pytest.mark.parametrize("path", APP_DIRS, ids=APP_IDS)
def test_network_policy_admits_what_clients_and_prometheus_use(path):
    (policy,) = [d for d in build(path) if d["kind"] == "NetworkPolicy"]
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= worker_group(path)["template"]["metadata"]["labels"].items()
    )
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]}
    monitors = [d for d in build(K8S_DIR / "monitoring") if d["kind"] == "PodMonitor"]
    scraped = {e["port"] for m in monitors for e in m["spec"]["podMetricsEndpoints"]}
    named = {**_ports(head(path)), **_ports(worker(path))}
    assert {named[p] for p in scraped} | {served_config(path)["http_options"]["port"], 8265} <= open_ports


# ---- image lock ---------------------------------------------------------------------------------------------------
LOCK = K8S_DIR / "requirements.lock"


def _lock() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pins


def test_lock_agrees_with_pyproject_image_and_rayservice():
    pins = _lock()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        m = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*(.*)", dep.split("#")[0].strip())
        name, spec = re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(3)
        assert name in pins, f"{name} is not locked: python -m k8s.lock"
        assert pins[name] in SpecifierSet(spec), f"lock has {name}=={pins[name]}, pyproject wants {spec}"
    dockerfile = (K8S_DIR / "Dockerfile").read_text()
    (arg,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)
    assert pins["ray"] == Version(arg) == Version(cluster(BASE)["rayVersion"])
    assert head(BASE)["image"].endswith(f"-ray{pins['ray']}")
    assert re.search(r"pip install .*-c requirements\.lock \.", dockerfile)
    assert "k8s/requirements.lock" in re.search(r"^COPY .*requirements\.lock.*$", dockerfile, re.M).group(0)
    # torch: PyPI's CUDA build, whose runtime comes as nvidia-* wheels (the node driver must support it).
    assert "torch" in pins and "nvidia-cuda-runtime" in pins
    (install,) = re.findall(r"^install:.*?(?=^\S)", (REPO_ROOT / "Makefile").read_text(), re.M | re.S)
    assert "-c k8s/requirements.lock" in install


def test_lock_pins_what_the_tests_run_on():
    """The lock was made from (and `make install` constrains) this environment: the versions CI tests."""
    from importlib import metadata

    pins = _lock()
    for name in ("ray", "diffusers", "transformers", "pydantic", "fastapi"):
        assert Version(metadata.version(name)) == pins[name], name
    assert Version(metadata.version("torch").split("+")[0]) == pins["torch"]
