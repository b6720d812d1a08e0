"""fluxauth: HTTP Basic authentication in front of tile, WMS, EDR, OPeNDAP and Zarr services."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxauth.config.settings import Settings, load_settings

if TYPE_CHECKING:
    from fluxauth.proxy.app import FluxAuthApp
    from fluxauth.proxy.middleware import FluxAuthMiddleware

__version__ = "0.1.0"
__all__ = ["FluxAuthApp", "FluxAuthMiddleware", "Settings", "__version__", "load_settings"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the command line needs neither the HTTP server's parts nor redis.
    if name == "FluxAuthApp":
        from fluxauth.proxy.app import FluxAuthApp

        return FluxAuthApp
    if name == "FluxAuthMiddleware":
        from fluxauth.proxy.middleware import FluxAuthMiddleware

        return FluxAuthMiddleware
    raise AttributeError(f"module 'fluxauth' has no attribute {name!r}")
