"""API key -> Principal. Keys are hashed (SHA-256) before lookup and never stored or logged in clear."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from pipeline.errors import TiergateError
from router.policy import Policy, Principal, hash_key

# Headers that carry the bare key, after ``Authorization: Bearer``: Azure-style SDKs send ``api-key``, the anthropic
# SDK and Claude Code ``x-api-key``.
_KEY_HEADERS = ("api-key", "x-api-key")


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer <key>``, ``api-key`` or ``x-api-key``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for name in _KEY_HEADERS:
        key = headers.get(name)
        if key and key.strip():
            return key.strip()
    return None


def authenticate(policy: Policy, headers: Mapping[str, str]) -> Principal:
    key = presented_key(headers)
    if key is None:
        raise TiergateError("auth.missing_api_key",
                            "missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')")
    # Lookup is by the key's SHA-256, so lookup timing can reveal nothing about the key itself.
    principal = policy.keys.get(hash_key(key))
    if principal is None:
        raise TiergateError("auth.invalid_api_key", "invalid API key")
    if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
        raise TiergateError("auth.expired_api_key",
                            f"API key {principal.key_id!r} expired at {principal.expires_at.isoformat()}")
    return principal

