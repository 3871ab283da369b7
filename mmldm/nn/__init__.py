"""N-d building blocks shared by plugins: every layer takes ``dims`` (1, 2 or 3)."""

from .attention import Attention, AttentionBlock, FeedForward, SpatialTransformer, TransformerBlock
from .embeddings import TimestepEmbedding, timestep_embedding
from .layers import avg_pool_nd, check_dims, conv_fn, conv_nd, conv_transpose_nd, group_norm, zero_module
from .resnet import Downsample, ResBlock, Upsample, transposed_upsample_pays, upsample_conv

__all__ = [
    "Attention", "AttentionBlock", "FeedForward", "SpatialTransformer", "TransformerBlock",
    "TimestepEmbedding", "timestep_embedding",
    "avg_pool_nd", "check_dims", "conv_fn", "conv_nd", "conv_transpose_nd", "group_norm", "zero_module",
    "Downsample", "ResBlock", "Upsample", "transposed_upsample_pays", "upsample_conv",
]
