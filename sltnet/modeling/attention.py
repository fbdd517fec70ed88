"""Relation attention of the long-term self-guided attention head
(docs/method.md#long-term-self-guided-attention): box geometry, its sinusoidal embedding and the multi-head
attention with a geometric prior (Hu et al. 2018)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Offsets and scales of docs/method.md#long-term-self-guided-attention: the 1e-3 keeps log finite for
# coincident centres, the 1e-6 keeps log finite where the geometric weight is zero.
CENTRE_OFFSET_EPS = 1e-3
GEOMETRIC_WEIGHT_EPS = 1e-6
EMBEDDING_WAVE_LENGTH = 1000.0
EMBEDDING_SCALE = 100.0


def box_geometry(boxes: Tensor, ref_boxes: Tensor) -> Tensor:
    """Relative geometry of every (box, reference box) pair.

    With w = x2 - x1 + 1, h = y2 - y1 + 1 and (cx, cy) the centre:
    (log(|cx_b - cx_r| / w_b + 1e-3), log(|cy_b - cy_r| / h_b + 1e-3), log(w_b / w_r), log(h_b / h_r)).

    Args:
        boxes: [R, 4] current boxes (x1, y1, x2, y2).
        ref_boxes: [M, 4] reference boxes.
    Returns:
        [R, M, 4].
    """
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    centre_x = boxes[:, 0] + 0.5 * widths
    centre_y = boxes[:, 1] + 0.5 * heights
    ref_widths = ref_boxes[:, 2] - ref_boxes[:, 0] + 1
    ref_heights = ref_boxes[:, 3] - ref_boxes[:, 1] + 1
    ref_centre_x = ref_boxes[:, 0] + 0.5 * ref_widths
    ref_centre_y = ref_boxes[:, 1] + 0.5 * ref_heights

    delta_x = torch.log((centre_x[:, None] - ref_centre_x[None, :]).abs() / widths[:, None] + CENTRE_OFFSET_EPS)
    delta_y = torch.log((centre_y[:, None] - ref_centre_y[None, :]).abs() / heights[:, None] + CENTRE_OFFSET_EPS)
    delta_w = torch.log(widths[:, None] / ref_widths[None, :])
    delta_h = torch.log(heights[:, None] / ref_heights[None, :])
    return torch.stack((delta_x, delta_y, delta_w, delta_h), dim=2)


def _embedding_phases(geometry: Tensor, embed_dim: int) -> Tensor:
    """[R, M, 4] -> [R, M, 4, embed_dim / 8]: 100 v / lambda_k for every value v and frequency k."""
    if embed_dim % 8 != 0:
        raise ValueError(f"embed_dim must be a multiple of 8, got {embed_dim}")
    num_frequencies = embed_dim // 8
    exponents = torch.arange(num_frequencies, dtype=geometry.dtype, device=geometry.device) / num_frequencies
    frequencies = EMBEDDING_SCALE / EMBEDDING_WAVE_LENGTH**exponents  # [F]: 100 / lambda_k
    return geometry.unsqueeze(-1) * frequencies


def geometry_embedding(geometry: Tensor, embed_dim: int = 64) -> Tensor:
    """Sinusoidal embedding of the pairwise geometry.

    For each of the 4 values v and k = 0 .. embed_dim/8 - 1, with lambda_k = 1000^(8k / embed_dim):
    sin(100 v / lambda_k) and cos(100 v / lambda_k); per value all sines then all cosines, values in order.

    Args:
        geometry: [R, M, 4] from ``box_geometry``.
        embed_dim: output size, a multiple of 8.
    Returns:
        [R, M, embed_dim].
    """
    phases = _embedding_phases(geometry, embed_dim)
    return torch.cat((phases.sin(), phases.cos()), dim=-1).flatten(2)  # [R, M, 4, 2F] -> [R, M, E]


def project_geometry_embedding(geometry: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``geometry_embedding(geometry) @ weight.T + bias`` without building the embedding: the sine
    and cosine halves meet their own columns of ``weight`` (no concatenated copy).

    Args:
        geometry: [R, M, 4] from ``box_geometry``.
        weight: [O, E] with E = the embedding size; bias: [O].
    Returns:
        [R, M, O].
    """
    outputs, embed_dim = weight.shape
    phases = _embedding_phases(geometry, embed_dim).flatten(2)  # [R, M, 4F]
    by_kind = weight.view(outputs, 4, 2, embed_dim // 8)  # per value: sine columns, then cosine columns
    sine_weight, cosine_weight = by_kind[:, :, 0].flatten(1), by_kind[:, :, 1].flatten(1)
    return F.linear(phases.sin(), sine_weight, bias) + F.linear(phases.cos(), cosine_weight)


def attention_bias(geometric_weights: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor | None:
    """The term :func:`relation_attention` adds to its logits: log(w_g + 1e-6) for a geometric prior
    and -inf for references to ignore.

    Args:
        geometric_weights: [..., G, R, M] non-negative geometric weights w_g (any leading dims,
            e.g. one slice per attention stage), or None for appearance only.
        key_mask: [M] bool, False for references to ignore (padding of a fixed-size memory); at
            least one reference must be valid.
    Returns:
        a tensor broadcastable to [..., G, R, M], or None when there is neither.
    """
    bias = None if geometric_weights is None else torch.log(geometric_weights + GEOMETRIC_WEIGHT_EPS)
    if key_mask is not None:
        dtype = torch.float32 if bias is None else bias.dtype
        masked = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device).masked_fill(~key_mask, -math.inf)
        bias = masked if bias is None else bias + masked
    return bias


def relation_attention(
    queries: Tensor, keys: Tensor, values: Tensor, num_heads: int, logit_bias: Tensor | None = None
) -> Tensor:
    """Multi-head attention with an optional additive logit term, one output per head.

    Head g's logits are q_g . k_g / sqrt(d / G) + bias_g (see :func:`attention_bias`: the geometric
    prior log(w_g + 1e-6) and the mask), softmax over the M references; its weights multiply the full
    ``values`` (or head g's own values).

    Args:
        queries: [R, d] projected current features; head g uses channels g*d/G .. (g+1)*d/G - 1.
        keys: [M, d] projected reference features, split into heads the same way.
        values: [M, D] reference features, which every head sees whole, or [G, M, D] per head.
        num_heads: G, which divides d.
        logit_bias: broadcastable to [G, R, M], or None.
    Returns:
        [R, G, D] per-head weighted sums of the values.
    """
    num_queries, dim = queries.shape
    head_dim = dim // num_heads
    queries = queries.view(num_queries, num_heads, head_dim).transpose(0, 1)  # [G, R, d/G]
    keys = keys.view(-1, num_heads, head_dim).permute(1, 2, 0)  # [G, d/G, M]
    logits = torch.matmul(queries, keys) / math.sqrt(head_dim)  # [G, R, M]
    if logit_bias is not None:
        logits = logits + logit_bias
    weights = logits.softmax(dim=2)
    return torch.matmul(weights, values).transpose(0, 1)  # [R, G, D]
