"""Typed application builder: `import_path: deployments.app:build_app` in serve_config.yaml."""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from deployments.config import AppConfig
from deployments.generator import ZImageGenerator
from deployments.http.admission import derived_bound
from deployments.ingress import Ingress
from deployments.pipeline.loading import PipelineFactory

# Deployment options, defined once. serve_config.yaml (and k8s overlays) state only what they change on top of these.
GENERATOR_DEFAULTS: dict = dict(
    name="Generator",
    max_ongoing_requests=32,  # >= 2 x the largest tier batch (12): one batch running, one filling
    max_queued_requests=64,  # bounded: overload becomes 503 + Retry-After, not an unbounded queue
    user_config={},  # always set, so reconfigure() runs (it loads the model and picks the batch size)
    graceful_shutdown_timeout_s=120,  # longer than the longest batch: in-flight requests finish on redeploy
    health_check_timeout_s=60,
)
INGRESS_DEFAULTS: dict = dict(
    name="Ingress",
    max_ongoing_requests=512,
    ray_actor_options={"num_cpus": 0},
    # Bounded here too, so the proxy never becomes the unbounded queue (its 503s carry Retry-After as well).
    max_queued_requests=1024,
    # An ingress replica holds requests as long as the generator does (queue + batch): drain for as long.
    graceful_shutdown_timeout_s=GENERATOR_DEFAULTS["graceful_shutdown_timeout_s"],
)


def make_app(
    config: AppConfig,
    pipeline_factory: PipelineFactory | None = None,
    generator_options: dict | None = None,
    ingress_options: dict | None = None,
) -> Application:
    """Ingress -> Generator. serve_config.yaml (or the *_options) override the defaults above. The ingress's bound on
    images in flight is `ingress_max_in_flight`, else what these options let Serve admit per ingress replica."""
    args = config.model_dump(mode="json")
    generator_defaults = {**GENERATOR_DEFAULTS, "ray_actor_options": {"num_gpus": 0 if config.device == "cpu" else 1}}
    generator_opts = {**generator_defaults, **(generator_options or {})}
    generator = serve.deployment(ZImageGenerator, **generator_opts)
    ingress_defaults = {**INGRESS_DEFAULTS, "backpressure_config": {"retry_after_s": config.retry_after_s}}
    ingress_opts = {**ingress_defaults, **(ingress_options or {})}
    ingress = serve.deployment(Ingress, **ingress_opts)
    max_in_flight = config.ingress_max_in_flight or derived_bound(generator_opts, ingress_opts)
    return ingress.bind(args, generator.bind(args, pipeline_factory), max_in_flight)


def build_app(args: dict) -> Application:
    return make_app(AppConfig.model_validate(args or {}))
