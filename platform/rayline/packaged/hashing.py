"""The ``hash`` step's one hash function, used by training (``data/steps.py``) and serving (``preprocessing.py``).

Each value first takes one canonical form, so that a value hashes alike however it travels: values equal in
Python share one form (``3``, ``3.0``, ``np.int64(3)`` and ``True == 1``; a float32 and a float64 that print alike),
and missing values (None, NaN, ``pd.NA``, NaT) share one. Strings keep their own forms (``"3"`` is not ``3``).

The hash is keyed BLAKE2b: without the key, a dictionary of likely values (names, zip codes) cannot be hashed to
find which one a bucket came from. The key is a secret taken from ``RAYLINE_HASH_KEY``, or from the file named by
``RAYLINE_HASH_KEY_FILE``; a model records only its fingerprint, and whoever loads the model needs the key too. A
spec may ask for ``keyed: false`` instead, which hashes with no key.
"""

from __future__ import annotations

import hashlib
import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

KEY_ENV = "RAYLINE_HASH_KEY"
KEY_FILE_ENV = "RAYLINE_HASH_KEY_FILE"
_NULL = b"\x00null"


class HashKeyError(ValueError):
    """No key to hash with, or not the key a model was trained with."""


def secret_key() -> bytes | None:
    """The hash key (32 bytes derived from the secret in ``RAYLINE_HASH_KEY`` or ``RAYLINE_HASH_KEY_FILE``), or
    None when neither is set."""
    secret = os.environ.get(KEY_ENV)
    if not secret and os.environ.get(KEY_FILE_ENV):
        try:
            secret = Path(os.environ[KEY_FILE_ENV]).expanduser().read_text().strip()
        except OSError as err:
            raise HashKeyError(f"{KEY_FILE_ENV}: cannot read {os.environ[KEY_FILE_ENV]} ({err.strerror})") from None
    if not secret:
        return None
    return hashlib.sha256(b"rayline-hash-key\x00" + secret.encode()).digest()


def fingerprint(key: bytes) -> str:
    """16 hex digits that identify ``key`` without revealing it."""
    return hashlib.blake2b(b"rayline-hash-key-fingerprint", key=key, digest_size=8).hexdigest()


def key_for(recorded: str) -> bytes:
    """The key whose fingerprint is ``recorded``, from the environment; a missing or different key raises."""
    key = secret_key()
    if key is None:
        raise HashKeyError(f"this model hashes columns with a secret key (fingerprint {recorded}): set {KEY_ENV}, or "
                           f"{KEY_FILE_ENV} to a file holding it, where the model is loaded")
    if fingerprint(key) != recorded:
        raise HashKeyError(f"the hash key in {KEY_ENV}/{KEY_FILE_ENV} (fingerprint {fingerprint(key)}) is not the one "
                           f"this model was trained with (fingerprint {recorded})")
    return key


def canonical(value: Any) -> bytes:
    """The one form of ``value`` that is hashed (see the module's docstring)."""
    if isinstance(value, str | np.str_):
        return b"s:" + str(value).encode()
    if isinstance(value, bool | np.bool_ | int | np.integer):
        return b"n:" + str(int(value)).encode()
    if isinstance(value, float | np.floating | Decimal):
        # a float32 is read as the shortest decimal that gives it back (as it prints): as a float64, 0.1f is not 0.1
        number = float(np.format_float_positional(value, unique=True)) if isinstance(value, np.floating) \
            else float(value)
        if math.isnan(number):
            return _NULL
        if math.isfinite(number) and number == int(number):
            return b"n:" + str(int(number)).encode()
        return b"n:" + repr(number).encode()
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return _NULL
    return f"{type(value).__name__}:{value}".encode()


def hash_bucket(value: Any, buckets: int, key: bytes | None) -> int:
    """The bucket of ``value``: keyed BLAKE2b of its canonical form (plain BLAKE2b when ``key`` is None)."""
    digest = hashlib.blake2b(canonical(value), key=key or b"", digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets
