"""Realistic inputs: resolve input specs against the model, read data sources, draw payloads.

Three stages, all deterministic from the plan (seed included), so every worker of
every agent builds the same pool and request `i` carries the same payload whatever
the number of agents:

1. `resolve_specs` (`resolve.py`; preflight, coordinator): names, datatypes and dims
   come from the model's metadata; the user's spec only says what to vary. A spec that
   does not fit the model is a PlanError naming the input.
2. `embed_sources` (`sources.py`; coordinator): files and JSON input-data files are
   read once and embedded in the plan (`InputSpec.items`, decoded by `items.py`);
   agents never read files.
3. `draw_payloads` (`draws.py`) + `make_tensors` (`tensors.py`) (pool builder, every
   worker): the distributions are sampled into N payload draws -- exactly weighted
   when every varying quantity is a discrete choice and the combinations fit in the
   pool, else stratified (Latin hypercube: each distribution's range is covered evenly
   by the N draws) -- and each draw becomes tensors. The pool is bounded in memory
   (`input_pool.max_bytes`); `bounds.py` gives preflight the largest sizes.

`shapes.py` holds the datatypes, shape helpers and image layout the stages share.
The hot path never comes here: `volley.request` serializes the tensors once and
`RequestPool.pick` maps a request's global index to a payload by a hash.
"""

from volley.inputs.bounds import input_bytes_bound, max_item_shape, max_pixels
from volley.inputs.draws import (
    DEFAULT_LENGTH,
    Draw,
    Factor,
    InputDraw,
    draw_nbytes,
    draw_payloads,
    factors,
    make_caches,
)
from volley.inputs.items import ItemCache, ItemInfo
from volley.inputs.resolve import resolve_specs
from volley.inputs.shapes import (
    DTYPES,
    element_count,
    fmt_num,
    hw_axes,
    is_image_like,
    item_dims,
    shape_text,
)
from volley.inputs.sources import (
    IMAGE_EXTS,
    MAX_EMBED_BYTES,
    RAW_EXTS,
    embed_sources,
    json_input_names,
    load_files,
    load_json,
    read_input_data,
)
from volley.inputs.tensors import Tensor, iter_tensors, make_tensors

__all__ = [
    "DEFAULT_LENGTH",
    "DTYPES",
    "IMAGE_EXTS",
    "MAX_EMBED_BYTES",
    "RAW_EXTS",
    "Draw",
    "Factor",
    "InputDraw",
    "ItemCache",
    "ItemInfo",
    "Tensor",
    "draw_nbytes",
    "draw_payloads",
    "element_count",
    "embed_sources",
    "factors",
    "fmt_num",
    "hw_axes",
    "input_bytes_bound",
    "is_image_like",
    "item_dims",
    "iter_tensors",
    "json_input_names",
    "load_files",
    "load_json",
    "make_caches",
    "make_tensors",
    "max_item_shape",
    "max_pixels",
    "read_input_data",
    "resolve_specs",
    "shape_text",
]
