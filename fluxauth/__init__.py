"""fluxauth: HTTP Basic authentication in front of tile, WMS, EDR, OPeNDAP and Zarr services."""

from fluxauth.app import FluxAuthApp
from fluxauth.middleware import FluxAuthMiddleware
from fluxauth.settings import Settings, load_settings

__version__ = "0.1.0"
__all__ = ["FluxAuthApp", "FluxAuthMiddleware", "Settings", "__version__", "load_settings"]
