"""Observability: Serve metrics (Prometheus), NVML GPU sampling, replica identity."""
