"""Monitoring as code: Grafana dashboards, Prometheus config/rules, upload and snapshot tools."""
