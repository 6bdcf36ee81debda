"""KubeRay manifests for the Z-Image service, and the Python that generates and checks them.

`python -m k8s.render` writes the generated kustomize patches from serve_config.yaml, `python -m k8s.validate`
builds every overlay and validates it against the vendored KubeRay CRD and Kubernetes schemas, and
`python -m k8s.dashboards` turns monitoring/dashboards/*.json into Grafana-sidecar ConfigMaps.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = REPO_ROOT / "k8s"
