"""A :class:`~drywall_core.serve.app.Service` from the settings: keys (or the refusal to run
without them), limits, and the promotion listener when a Prefect API is configured."""

from __future__ import annotations

import os

from drywall_core.base.errors import InputError
from drywall_core.serve.app import Service
from drywall_core.serve.keys import KeyRing
from drywall_core.stages.context import Context


def build_service(ctx: Context, insecure_no_auth: bool = False) -> Service:
    cfg = ctx.settings.serve
    if cfg.api_keys_file is None and not insecure_no_auth:
        raise InputError(
            "no API keys: set DRYWALL_SERVE__API_KEYS_FILE (make one with `drywall api-key new --file F`) "
            "or pass --insecure-no-auth to serve without keys"
        )
    keys = KeyRing.from_file(cfg.api_keys_file) if cfg.api_keys_file is not None else None
    if cfg.version:
        ctx.models.show(cfg.version)  # a pinned version that does not exist fails at start, by name
    service = Service(ctx, cfg, keys)
    api = os.environ.get("PREFECT_API_URL")
    if api and not cfg.version:
        from drywall_core.serve.events import listen_for_promotions

        token = os.environ.get("PREFECT_API_KEY") or os.environ.get("PREFECT_API_AUTH_STRING")
        service.listeners.append(listen_for_promotions(api, token, ctx.models.name))
    return service
