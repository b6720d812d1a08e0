"""xpublish with xpublish-tiles (tiles and WMS) and xpublish-wms, as an operator would start it.

    python xpublish_server.py --port 9001 era5=/data/era5.zarr [gfs=/data/gfs.zarr ...]

Every dataset under ``/datasets/{name}/``: ``tiles/`` and ``wms`` (xpublish-tiles),
``cfwms`` (xpublish-wms, moved from its own ``wms`` prefix, which xpublish-tiles takes).
``/datasets`` lists them all: fluxauth's routes must never reach it.
"""

from __future__ import annotations

import argparse
import os

# xpublish-tiles' WMS models name their attributes "xlink:href", which pydantic-xml's
# lxml backend refuses (a 500 for GetCapabilities): the standard library's, whenever
# lxml is installed too (MapProxy needs it, OWSLib too). Before pydantic-xml is imported.
os.environ.setdefault("FORCE_STD_XML", "true")

import xarray as xr
import xpublish
from xpublish_tiles.xpublish.tiles import TilesPlugin
from xpublish_tiles.xpublish.wms import WMSPlugin
from xpublish_wms import CfWmsPlugin

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=9001)
parser.add_argument("datasets", nargs="+", metavar="NAME=ZARR")
args = parser.parse_args()

datasets = {name: xr.open_zarr(path) for name, _, path in (item.partition("=") for item in args.datasets)}
rest = xpublish.Rest(
    datasets,
    plugins={"tiles": TilesPlugin(), "wms": WMSPlugin(), "cf_wms": CfWmsPlugin(dataset_router_prefix="/cfwms")},
)
rest.serve(host=args.host, port=args.port, log_level="warning")
