"""Pydantic models of a service spec (``serving/*.yaml``): a registered model behind HTTP on Ray Serve."""

from __future__ import annotations

from pydantic import Field, model_validator

from rayline.errors import SpecError
from rayline.spec.base import SpecFile, Strict
from rayline.spec.model_uri import RegistryUri


class AutoscalingSpec(Strict):
    """Ray Serve autoscaling: the number of replicas follows the ongoing requests per replica. These fields are
    Serve's ``autoscaling_config``."""

    min_replicas: int = Field(1, ge=0, description="the fewest replicas; 0 scales to zero when idle, and a request "
                              "during the cold start then waits up to ``request_timeout_s``")
    max_replicas: int = Field(2, ge=1, description="the most replicas; at least ``min_replicas``")
    initial_replicas: int | None = Field(None, ge=0, description="replicas started by a deploy; unset: Serve's "
                                         "choice (``min_replicas``)")
    target_ongoing_requests: float = Field(8.0, gt=0.0, description="the ongoing requests per replica that the "
                                           "autoscaler aims for: above it replicas are added, below it removed")
    upscale_delay_s: float = Field(2.0, ge=0.0, description="how long the load must stay above the target before "
                                   "replicas are added")
    downscale_delay_s: float = Field(60.0, ge=0.0, description="how long the load must stay below the target "
                                     "before replicas are removed")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class BatchingSpec(Strict):
    """Dynamic batching with ``@serve.batch``: rows of concurrent requests share one forward pass. A replica
    serving a canary batches each version apart."""

    max_batch_size: int = Field(32, ge=1, description="the most requests whose rows share one forward pass")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, description="how long a batch waits for more requests; "
                                        "only while other requests are queued on the replica, so a lone request "
                                        "goes at once")


class ResourcesSpec(Strict):
    """What each replica reserves (its Ray actor options)."""

    num_cpus: float = Field(1.0, ge=0.0, description="CPUs each replica reserves")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs each replica reserves")


class AuthSpec(Strict):
    """API keys (``Authorization: Bearer <key>``). Keys come from the environment or a file, never the YAML.

    With neither source set, the service is open. With either, every route needs a key (model metadata, ``/docs``
    and ``/openapi.json`` included) except the health routes. Only SHA-256 digests of the keys reach the
    replicas, and keys are compared in constant time. A source that is set but missing or empty is refused
    before the deploy."""

    api_keys_env: str | None = Field(None, description="environment variable, read where the deploy runs, holding "
                                     "comma-separated keys")
    api_keys_file: str | None = Field(None, description="file with one key per line")


class CanarySpec(Strict):
    """A champion/challenger split: a share of requests goes to a second version of the same model. Each arm
    hot-swaps on its own alias and batches apart; answers name the version, ``/readyz`` shows the split, and
    every metric carries the ``version`` tag."""

    model: RegistryUri = Field(description="the challenger: ``models:/<name>@<alias>`` or "
                                           "``models:/<name>/<version>``, with the same name as the service's "
                                           "``model``")
    traffic_percent: float = Field(10.0, gt=0.0, lt=100.0, description="the percentage of requests the "
                                   "challenger answers")


class ServiceSpec(SpecFile):
    """A model endpoint (``serving/*.yaml``): which registered model Ray Serve answers with, and how the endpoint
    scales, batches, admits and authenticates requests.

    Every application on a cluster shares Serve's one HTTP server, whose ``host``, ``port`` and
    ``request_timeout_s`` the first deploy sets: a spec asking for others is refused naming the field
    (``rayline serve shutdown`` first to change them)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="the Serve application's name (``rayline serve status`` and ``shutdown "
                                  "--name`` use it)")
    model: RegistryUri = Field(description="the registered model to serve: ``models:/<name>@<alias>`` (followed "
                                           "as the alias moves) or ``models:/<name>/<version>``")
    route_prefix: str = Field("/", pattern=r"^/", description="the URL path the application's routes sit under")
    host: str = Field("127.0.0.1", description="the address Serve's HTTP server binds; shared by every application "
                      "on the cluster")
    port: int = Field(8000, ge=1, le=65535, description="the port Serve's HTTP server listens on; shared by every "
                      "application on the cluster")
    request_timeout_s: float = Field(
        60.0, gt=0.0, description="longest a request may take end to end, a cold start from zero replicas "
        "included; shared by every application on the cluster")
    autoscaling: AutoscalingSpec = Field(AutoscalingSpec(), description="how many replicas, following the load")
    max_ongoing_requests: int = Field(64, ge=1, description="concurrent requests per replica")
    max_queued_requests: int = Field(256, ge=1, description="requests that may wait for a replica; beyond this, "
                                     "requests get 503 instead of waiting")
    batching: BatchingSpec = Field(BatchingSpec(), description="how concurrent requests share forward passes")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="what each replica reserves")
    auth: AuthSpec = Field(AuthSpec(), description="where the API keys come from; none: the service is open")
    max_body_bytes: int = Field(1_048_576, ge=1, description="larger bodies get 413 before they are parsed")
    body_timeout_s: float = Field(10.0, gt=0.0, description="longest a client may take to send a request body "
                                  "once it has started; slower (or stalled) senders get 408")
    deploy_timeout_s: float = Field(
        600.0, gt=0.0, description="longest ``rayline serve`` waits for the application to run; past it, or when "
        "Serve gives up on the replicas, the deploy is reported as failed")
    max_rows: int = Field(1024, ge=1, description="the most rows one request may hold; more get 422")
    reload_interval_s: float = Field(
        10.0, ge=0.0, description="how often replicas serving an alias check it and hot-swap, without dropping a "
        "request, to the version it now names (0: never)")
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
