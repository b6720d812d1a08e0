"""Write the stock servers' test data (run by .venv-stock's Python: rasterio, xarray and zarr live there).

    make_data.py DIR

- ``DIR/cogs/acme/era5/main/surface.tif``: a Cloud-Optimized GeoTIFF, RGB, in
  EPSG:3857 over the whole Web Mercator square, a pattern that differs in
  every tile (for TiTiler, whose pinned ``url`` names it);
- ``DIR/era5.zarr``: a global 2 m temperature field on a 5-degree grid (for xpublish);
- ``DIR/mapproxy/``: MapProxy's projects directory, ``basemap.yaml`` and
  ``secret.yaml``, each a WMS, WMTS, TMS and OGC API over a file cache of PNG
  tiles that no source renders: the tiles written here, zooms 0 to 2, every one
  a colour of its own (``tile_colour``), under ``tiles/{project}/{z}/{x}/{y}.png``
  (rows from the top).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from PIL import Image
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


# A MapProxy project: its own services, one layer over a cache with no source (only the tiles on disk,
# a blank tile elsewhere), unpaletted PNG so that every map is plain RGB. Paths are the project file's.
MAPPROXY_PROJECT = """\
services:
  wms:
    srs: ["EPSG:3857", "EPSG:4326"]
    md:
      title: {title}
  wmts:
  tms:
  ogcapi: {{}}
layers:
  - name: {layer}
    title: {title}
    sources: [{layer}_cache]
caches:
  {layer}_cache:
    grids: [webmercator]
    sources: []
    cache:
      type: file
      directory_layout: tms
      directory: tiles/{project}
grids:
  webmercator:
    base: GLOBAL_WEBMERCATOR
globals:
  image:
    paletted: false
"""
MAPPROXY_ZOOMS = 3


def tile_colour(project: str, z: int, x: int, y: int) -> tuple[int, int, int]:
    """The colour of MapProxy tile ``z/x/y`` (row ``y`` from the top) of ``project``: no two alike."""
    return (40 + 70 * z, 30 + 25 * x + (100 if project == "secret" else 0), 30 + 25 * y)


def write_mapproxy(path: Path) -> None:
    for project, layer, title in (("basemap", "surface", "acme basemap"), ("secret", "secret", "secret project")):
        path.mkdir(parents=True, exist_ok=True)
        (path / f"{project}.yaml").write_text(MAPPROXY_PROJECT.format(project=project, layer=layer, title=title))
        for z in range(MAPPROXY_ZOOMS):
            for x in range(2**z):
                for y in range(2**z):
                    tile = path / "tiles" / project / str(z) / str(x) / f"{y}.png"
                    tile.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (256, 256), tile_colour(project, z, x, y)).save(tile)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    write_cog(out / "cogs" / "acme" / "era5" / "main" / "surface.tif")
    write_zarr(out / "era5.zarr")
    write_mapproxy(out / "mapproxy")
