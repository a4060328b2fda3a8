"""Pydantic models of a service spec (``serving/*.yaml``): a registered model behind HTTP on Ray Serve."""

from __future__ import annotations

from pydantic import Field, model_validator

from rayline.errors import SpecError
from rayline.spec.base import SpecFile, Strict
from rayline.spec.model_uri import RegistryUri


class AutoscalingSpec(Strict):
    """Ray Serve autoscaling: replicas follow the ongoing requests per replica."""

    min_replicas: int = Field(1, ge=0, description="0 scales to zero when idle")
    max_replicas: int = Field(2, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(8.0, gt=0.0)
    upscale_delay_s: float = Field(2.0, ge=0.0)
    downscale_delay_s: float = Field(60.0, ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class BatchingSpec(Strict):
    """Dynamic batching with ``@serve.batch``: rows of concurrent requests share one forward pass."""

    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0.0)


class ResourcesSpec(Strict):
    """What each replica reserves."""

    num_cpus: float = Field(1.0, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)


class AuthSpec(Strict):
    """API keys (``Authorization: Bearer <key>``). Keys come from the environment or a file, never the YAML."""

    api_keys_env: str | None = Field(None, description="environment variable holding comma-separated keys")
    api_keys_file: str | None = Field(None, description="file with one key per line")


class CanarySpec(Strict):
    """A champion/challenger split: a share of requests goes to a second version of the same model."""

    model: RegistryUri = Field(description="models:/<name>@<alias> or models:/<name>/<version>, same name as "
                                           "`model`")
    traffic_percent: float = Field(10.0, gt=0.0, lt=100.0, description="share of requests it answers")


class ServiceSpec(SpecFile):
    """A model endpoint: which model, how it scales, batches, admits and authenticates requests."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: RegistryUri = Field(description="models:/<name>@<alias> or models:/<name>/<version>")
    route_prefix: str = Field("/", pattern=r"^/")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    request_timeout_s: float = Field(
        60.0, gt=0.0, description="longest a request may take end to end, a cold start from zero replicas included")
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    max_ongoing_requests: int = Field(64, ge=1, description="concurrent requests per replica")
    max_queued_requests: int = Field(256, ge=1, description="beyond this, requests get 503 instead of waiting")
    batching: BatchingSpec = BatchingSpec()
    resources: ResourcesSpec = ResourcesSpec()
    auth: AuthSpec = AuthSpec()
    max_body_bytes: int = Field(1_048_576, ge=1, description="larger bodies get 413 before they are parsed")
    body_timeout_s: float = Field(10.0, gt=0.0, description="longest a client may take to send a request body "
                                  "once it has started; slower (or stalled) senders get 408")
    deploy_timeout_s: float = Field(
        600.0, gt=0.0, description="longest `rayline serve` waits for the application to run; past it, or when "
        "Serve gives up on the replicas, the deploy is reported as failed")
    max_rows: int = Field(1024, ge=1, description="rows per request")
    reload_interval_s: float = Field(
        10.0, ge=0.0, description="how often replicas check the alias and hot-swap to its new version (0: never)")
    canary: CanarySpec | None = Field(None, description="send a share of requests to a challenger version")

    @model_validator(mode="after")
    def _canary_same_model(self) -> ServiceSpec:
        if self.canary is not None and self.canary.model.name != self.model_name:
            raise SpecError(f"the canary must be a version of {self.model_name!r}, the served model",
                            field="canary.model")
        return self

    @property
    def model_name(self) -> str:
        """The registered model's name."""
        return self.model.name
