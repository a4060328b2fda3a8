"""What one model server replica needs, in one value built from a service spec."""

from __future__ import annotations

from dataclasses import dataclass

from rayline.spec import ModelUri, ServiceSpec


@dataclass(frozen=True)
class ServerConfig:
    """A replica's settings: the model (and canary), the registry, admission limits, batching and API keys
    (as SHA-256 digests: keys themselves never leave the driver)."""

    model: ModelUri
    tracking_uri: str
    key_digests: tuple[str, ...]
    max_rows: int
    max_body_bytes: int
    body_timeout_s: float
    max_batch_size: int
    batch_wait_timeout_s: float
    reload_interval_s: float
    canary: ModelUri | None = None
    canary_percent: float = 0.0

    @classmethod
    def from_spec(cls, spec: ServiceSpec, tracking_uri: str, key_digests: list[str]) -> ServerConfig:
        """The replica settings ``spec`` asks for."""
        return cls(
            model=spec.model, tracking_uri=tracking_uri, key_digests=tuple(key_digests), max_rows=spec.max_rows,
            max_body_bytes=spec.max_body_bytes, body_timeout_s=spec.body_timeout_s,
            max_batch_size=spec.batching.max_batch_size,
            batch_wait_timeout_s=spec.batching.batch_wait_timeout_s, reload_interval_s=spec.reload_interval_s,
            canary=spec.canary.model if spec.canary else None,
            canary_percent=spec.canary.traffic_percent if spec.canary else 0.0,
        )
