"""Shared request dependencies: the runtime and the API-key check (async: no thread hop per request)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from chute.runtime import Runtime


async def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def require_key(request: Request) -> None:
    """With CHUTE_API_KEYS set, every API call needs ``Authorization: Bearer KEY``."""
    keys: list[str] = request.app.state.runtime.settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip(), k) for k in keys):
        raise HTTPException(401, "missing or wrong API key: send Authorization: Bearer KEY",
                            headers={"WWW-Authenticate": "Bearer"})
