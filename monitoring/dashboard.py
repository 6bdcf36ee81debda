"""Build the Grafana dashboard from monitoring.panels with grafana-foundation-sdk (Grafana 11.6, schemaVersion 41).

Regenerate the committed JSON after editing panels.py (tests/unit/test_monitoring_dashboards.py fails until you do):

    python -m monitoring.dashboard
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models import prometheus as prom_m

from monitoring.panels import DCGM_POD_ALL, DCGM_ROWS, ROWS, PanelSpec, RowSpec

logger = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
UID = "zimage-serve"
DCGM_UID = "zimage-serve-dcgm"
DATASOURCE = dashboard.DataSourceRef(type_val="prometheus", uid="${datasource}")
PANEL_HEIGHT = 8


def _query_var(name: str, query: str, description: str, all_value: str = ".*") -> dash_b.QueryVariable:
    return (
        dash_b.QueryVariable(name)
        .label(name)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        .include_all(True)
        .all_value(all_value)
        .multi(True)
        .current(dashboard.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def _dcgm_variables() -> list:
    """datasource, Namespace, Pod: dcgm-exporter series carry the pod using the GPU, not Ray's labels."""
    return [
        dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_var(
            "Namespace",
            "label_values(DCGM_FI_DEV_GPU_UTIL, namespace)",
            "Namespace of the RayService (the `namespace` or `exported_namespace` label of dcgm-exporter's series).",
        ),
        _query_var(
            "Pod",
            f'label_values(DCGM_FI_DEV_GPU_UTIL{{namespace=~"$Namespace", pod=~"{DCGM_POD_ALL}"}}, pod)',
            "GPU worker pod; All = this RayService's workers.",
            all_value=DCGM_POD_ALL,
        ),
    ]


def _variables() -> list:
    """datasource, Cluster, Application, Replica - the names Ray's own Serve dashboards use (KubeRay-friendly)."""

    return [
        dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_var(
            "Cluster",
            "label_values(ray_serve_deployment_replica_healthy, ray_io_cluster)",
            "Ray cluster (the ray_io_cluster label that KubeRay's PodMonitor adds; empty without KubeRay).",
        ),
        _query_var(
            "Application",
            'label_values(ray_serve_deployment_replica_healthy{ray_io_cluster=~"$Cluster"}, application)',
            "Serve application (zimage by default).",
        ),
        _query_var(
            "Replica",
            'label_values(ray_zimage_max_batch_size{ray_io_cluster=~"$Cluster", application=~"$Application"}, replica)',
            "Generator replica.",
        ),
    ]


def _targets(spec: PanelSpec) -> list[prometheus.Dataquery]:
    out = []
    for i, q in enumerate(spec.queries):
        t = prometheus.Dataquery().datasource(DATASOURCE).ref_id(chr(ord("A") + i)).expr(q.expr).legend_format(q.legend)
        if q.heatmap:
            t = t.format(prom_m.PromQueryFormat.HEATMAP)
        out.append(t.range())
    return out


def _panel(spec: PanelSpec):
    if spec.kind == "stat":
        p = (
            stat.Panel()
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .graph_mode(common.BigValueGraphMode.NONE)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
    elif spec.kind == "heatmap":
        p = heatmap.Panel().calculate(False).show_value(common.VisibilityMode.AUTO)
    else:
        p = (
            timeseries.Panel()
            .line_width(1)
            .fill_opacity(10)
            .show_points(common.VisibilityMode.NEVER)
            .legend(
                common_b.VizLegendOptions()
                .show_legend(True)
                .display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM)
            )
            .tooltip(
                common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
            )
        )
    p = p.title(spec.title).description(spec.description).datasource(DATASOURCE).unit(spec.unit)
    p = p.span(spec.width).height(PANEL_HEIGHT).targets(_targets(spec))
    if spec.min is not None and spec.kind == "timeseries":
        p = p.min(spec.min)
    for i, q in enumerate(spec.queries):
        if q.right_unit is not None:
            if spec.kind != "timeseries":
                raise ValueError(f"{spec.title}: a right-hand axis needs a timeseries panel")
            p = p.override_by_query(
                chr(ord("A") + i),
                [
                    dashboard.DynamicConfigValue(id_val="unit", value=q.right_unit),
                    dashboard.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                ],
            )
    if spec.max is not None:
        p = p.max(spec.max)
    return p


def build() -> dict:
    """The dashboard as the JSON dict Grafana stores (and `python -m monitoring.upload` sends)."""
    return _build(
        UID,
        "Z-Image-Turbo on Ray Serve",
        "Throughput, latency, queue, batching against the VRAM-tier max, replicas, and GPU activity of the "
        "Z-Image-Turbo Serve app. Metrics: Ray Serve's ray_serve_* and the app's ray_zimage_*.",
        ROWS,
        _variables(),
    )


def build_dcgm() -> dict:
    """The DCGM variant of the GPU panels, for clusters whose GPU operator runs dcgm-exporter."""
    return _build(
        DCGM_UID,
        "Z-Image-Turbo GPUs (dcgm-exporter)",
        "GPU activity, memory, power and temperature of the Z-Image-Turbo GPU workers from NVIDIA's dcgm-exporter "
        "(DCGM_FI_*), for Kubernetes clusters with the GPU operator; the main dashboard's GPU row reads the "
        "replicas' own NVML sampler instead.",
        DCGM_ROWS,
        _dcgm_variables(),
    )


def _build(uid: str, title: str, description: str, rows: tuple[RowSpec, ...], variables: list) -> dict:
    d = (
        dash_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["ray-serve", "z-image", "text-to-image"])
        .editable()
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .variables(variables)
    )
    panel_id = 0
    for row in rows:  # stable ids: links like /d/zimage-serve?viewPanel=N keep working across regenerations
        panel_id += 1
        d = d.with_row(dash_b.Row(row.title).id(panel_id))
        for spec in row.panels:
            panel_id += 1
            d = d.with_panel(_panel(spec).id(panel_id))
    return json.loads(JSONEncoder(sort_keys=True).encode(d.build()))


def render() -> dict[Path, str]:
    """File -> JSON text, exactly as committed under monitoring/dashboards/."""
    return {
        DASHBOARD_DIR / f"{uid}.json": json.dumps(d, indent=2, sort_keys=True) + "\n"
        for uid, d in ((UID, build()), (DCGM_UID, build_dcgm()))
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path, text in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
