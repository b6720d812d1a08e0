"""Write the stock servers' test data (run by .venv-stock's Python: rasterio, xarray and zarr live there).

    make_data.py DIR

- ``DIR/cogs/acme/era5/main/surface.tif``: a Cloud-Optimized GeoTIFF, RGB, in
  EPSG:3857 over the whole Web Mercator square, a pattern that differs in
  every tile (for TiTiler, whose pinned ``url`` names it);
- ``DIR/era5.zarr``: a global 2 m temperature field on a 5-degree grid (for xpublish).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from rasterio.transform import from_bounds

HALF = 20037508.342789244  # the Web Mercator square's half width, in metres
SIZE = 512


def write_cog(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    bands = np.stack([(x // 2) % 256, (y // 2) % 256, ((x // 64 + y // 64) % 2) * 200 + 40]).astype("uint8")
    profile = {
        "driver": "COG",
        "width": SIZE,
        "height": SIZE,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:3857",
        "transform": from_bounds(-HALF, -HALF, HALF, HALF, SIZE, SIZE),
        "blocksize": 256,
    }
    with rasterio.open(path, "w", **profile) as cog:
        cog.write(bands)


def write_zarr(path: Path) -> None:
    latitude = np.arange(-85.0, 85.1, 5.0)
    longitude = np.arange(-180.0, 180.0, 5.0)
    field = 250 + 40 * np.cos(np.deg2rad(latitude))[:, None] + 5 * np.sin(np.deg2rad(longitude))[None, :]
    dataset = xr.Dataset(
        {
            "t2m": (
                ("latitude", "longitude"),
                field.astype("float32"),
                {"long_name": "2 m temperature", "units": "K", "valid_min": 240.0, "valid_max": 300.0},
            )
        },
        coords={
            "latitude": ("latitude", latitude, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
            "longitude": ("longitude", longitude, {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
        },
    )
    dataset.to_zarr(path, mode="w")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    write_cog(out / "cogs" / "acme" / "era5" / "main" / "surface.tif")
    write_zarr(out / "era5.zarr")
