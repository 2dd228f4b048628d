"""Compression of the Linear layers of any nn.Module: low rank, pruning, k-means, a file format.

from nerfcomp.compress import CompressionConfig, compress, save, load
small = compress(model, CompressionConfig(bits=4, rank=32))
nbytes = save(small, "m.nrc")   # == os.path.getsize("m.nrc")
again = load("m.nrc")           # same outputs as `small`, bit for bit
"""

from nerfcomp.compress.codec import (
    decode,
    encode,
    encode_with_breakdown,
    entropy_bound,
    load,
    read_header,
    register_architecture,
    save,
    size_breakdown,
)
from nerfcomp.compress.config import CompressionConfig, LayerConfig, ResolvedLayer
from nerfcomp.compress.layers import (
    CompressedLinear,
    StoredTensor,
    compress,
    linear_names,
    quantize_stored,
    replace_linears,
    tensors_to_store,
)
from nerfcomp.compress.lowrank import factors_are_smaller, factors_from_svd, svd_from_weight
from nerfcomp.compress.prune import magnitude_mask, prune_

__all__ = [
    "CompressedLinear",
    "CompressionConfig",
    "LayerConfig",
    "ResolvedLayer",
    "StoredTensor",
    "compress",
    "decode",
    "encode",
    "encode_with_breakdown",
    "entropy_bound",
    "factors_are_smaller",
    "factors_from_svd",
    "linear_names",
    "load",
    "magnitude_mask",
    "prune_",
    "quantize_stored",
    "read_header",
    "register_architecture",
    "replace_linears",
    "save",
    "size_breakdown",
    "svd_from_weight",
    "tensors_to_store",
]
