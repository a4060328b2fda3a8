"""API keys: loaded in the driver, shipped to replicas only as SHA-256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from pathlib import Path

from rayline.errors import SpecError
from rayline.spec.service import AuthSpec


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_keys(auth: AuthSpec) -> list[str]:
    """The configured keys (empty: auth off). Missing sources are refused naming the field."""
    keys: list[str] = []
    if auth.api_keys_env:
        raw = os.environ.get(auth.api_keys_env)
        if not raw:
            raise SpecError(f"environment variable {auth.api_keys_env} is not set", field="auth.api_keys_env")
        keys += raw.split(",")
    if auth.api_keys_file:
        path = Path(auth.api_keys_file).expanduser()
        if not path.is_file():
            raise SpecError(f"API key file not found: {path}", field="auth.api_keys_file")
        keys += path.read_text().splitlines()
    keys = [key.strip() for key in keys if key.strip()]
    if (auth.api_keys_env or auth.api_keys_file) and not keys:
        raise SpecError("no API keys found in the configured source", field="auth")
    return keys


def load_key_digests(auth: AuthSpec) -> list[str]:
    """SHA-256 digests of the configured keys: what replicas compare against."""
    return [digest(key) for key in load_keys(auth)]


def authorized(header: str | None, digests: Sequence[str]) -> bool:
    """True when auth is off or ``Authorization: Bearer <key>`` matches a configured key."""
    if not digests:
        return True
    scheme, _, key = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        return False
    presented = digest(key.strip())
    matches = [hmac.compare_digest(presented, known) for known in digests]  # every key compared, no early exit
    return any(matches)
