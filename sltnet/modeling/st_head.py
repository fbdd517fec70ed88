"""Spatio-temporal (ST) box head and classifier (docs/method.md#long-term-self-guided-attention) and the
double-head fusion (docs/method.md#double-head-and-inference).

Parameter names follow the original SLTnet checkpoints (``roi_heads.st_box_head.{fcs,Wgs,Wqs,Wks,Wvs}.{i}``
and ``roi_heads.st_cls_predictor.cls_score``), so those map onto these modules unchanged.
"""

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode

from sltnet.modeling.attention import attention_bias, box_geometry, project_geometry_embedding, relation_attention


def _make_fc(in_features: int, out_features: int) -> nn.Linear:
    """Linear layer with Kaiming-uniform (a=1) weights and zero bias."""
    fc = nn.Linear(in_features, out_features)
    nn.init.kaiming_uniform_(fc.weight, a=1)
    nn.init.zeros_(fc.bias)
    return fc


def _make_fcs(input_size: int, fc_dim: int, num_fc: int) -> nn.ModuleList:
    """``num_fc`` FC layers: input_size -> fc_dim, then fc_dim -> fc_dim."""
    return nn.ModuleList(_make_fc(input_size if i == 0 else fc_dim, fc_dim) for i in range(num_fc))


def _make_conv1x1(in_channels: int, out_channels: int, groups: int = 1) -> nn.Conv2d:
    """1x1 convolution with normal(std 0.01) weights and zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, groups=groups)
    nn.init.normal_(conv.weight, std=0.01)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return conv


def _conv1x1_parameters(module: nn.Module) -> tuple[Tensor, Tensor]:
    """Weight and bias of a convolution made by :func:`_make_conv1x1` (an entry of an ``nn.ModuleList``)."""
    conv = cast(nn.Conv2d, module)
    assert conv.bias is not None
    return conv.weight, conv.bias


class STFCBoxHead(nn.Module):
    """The ST head without long-term attention: flatten, then FC + ReLU layers.

    Args:
        input_size: C * S * S of the aggregated RoI features.
        fc_dim: width of every FC layer (1024).
        num_fc: number of FC layers (2).
    """

    def __init__(self, input_size: int, fc_dim: int = 1024, num_fc: int = 2) -> None:
        super().__init__()
        self.fcs = _make_fcs(input_size, fc_dim, num_fc)

    def forward(self, x: Tensor) -> Tensor:
        """[R, C, S, S] aggregated tubelet features -> [R, fc_dim]."""
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return x


class STAttentionBoxHead(nn.Module):
    """The ST head with long-term self-guided attention (docs/method.md#long-term-self-guided-attention).

    x = flatten(features); for each stage s: x = ReLU(fcs[s](x)); x = x + Attn_s(x, refs, geometry).
    The references are fixed for all stages: the given ones (keyframe memory, or support groups in
    training) followed, unless ``append_current`` is False, by the current frame's first P rows of
    ReLU(fcs[0](x)).

    Args:
        input_size: C * S * S of the aggregated RoI features.
        fc_dim: d, width of every FC layer (1024); a multiple of ``num_groups``.
        num_stages: S, FC + attention stages (``ATTENTION.STAGE``).
        num_groups: G, attention heads (``ATTENTION.GROUP``).
        embed_dim: size of the geometry embedding (``ATTENTION.EMBED_DIM``), a multiple of 8.
        num_ref_rois: P, rows of the current frame used as references and stored in the memory.
        location_free: drop the geometric term (``ATTENTION.LOCATION_FREE``); no ``Wgs`` are created.
    """

    def __init__(
        self,
        input_size: int,
        fc_dim: int = 1024,
        num_stages: int = 2,
        num_groups: int = 16,
        embed_dim: int = 64,
        num_ref_rois: int = 75,
        location_free: bool = False,
    ) -> None:
        super().__init__()
        if fc_dim % num_groups != 0:
            raise ValueError(f"fc_dim ({fc_dim}) must be a multiple of num_groups ({num_groups})")
        self.num_groups = num_groups
        self.embed_dim = embed_dim
        self.num_ref_rois = num_ref_rois
        self.location_free = location_free
        self.fcs = _make_fcs(input_size, fc_dim, num_stages)
        if not location_free:
            # W_G: the geometry embedding -> one non-negative weight per head and pair.
            self.Wgs = nn.ModuleList(_make_conv1x1(embed_dim, num_groups) for _ in range(num_stages))
        self.Wqs = nn.ModuleList(_make_fc(fc_dim, fc_dim) for _ in range(num_stages))
        self.Wks = nn.ModuleList(_make_fc(fc_dim, fc_dim) for _ in range(num_stages))
        # W_V: mixes the G per-head outputs (G * d channels) into d, each head feeding d / G channels.
        self.Wvs = nn.ModuleList(
            _make_conv1x1(num_groups * fc_dim, fc_dim, groups=num_groups) for _ in range(num_stages)
        )

    def embed(self, x: Tensor) -> Tensor:
        """ReLU(fcs[0](flatten(x))): [R, C, S, S] -> [R, d], the features references are made of."""
        return F.relu(self.fcs[0](x.flatten(1)))

    def forward(
        self,
        x: Tensor,
        boxes: Tensor,
        ref_features: Tensor,
        ref_boxes: Tensor,
        ref_valid: Tensor | None = None,
        valid: Tensor | None = None,
        append_current: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Attend from the current tubelets to the references.

        Args:
            x: [R, C, S, S] aggregated tubelet features, best tubelet first.
            boxes: [R, 4] the tubelets' reference-frame boxes.
            ref_features: [M', d] earlier references (``LongTermMemory.references()`` or
                ``as_padded()``); M' may be 0.
            ref_boxes: [M', 4] their boxes.
            ref_valid: optional [M'] bool mask, False for padding rows of a fixed-size memory.
            valid: optional [R] bool mask (with ``ref_valid``), False for padding rows of a
                fixed-size set of tubelets; those rows are no references.
            append_current: append the memory entry to the references (test time; M = M' +
                min(R, P)); False attends to the given references alone (training as the original
                does, docs/method.md#long-term-references-in-training), which must not be empty.
        Returns:
            features [R, d], and the memory entry [min(R, P), d]: the current frame's first P rows of
            ReLU(fcs[0](x)).
        """
        x = self.embed(x)
        entry = x[: self.num_ref_rois]
        refs, all_ref_boxes, key_mask = ref_features, ref_boxes, ref_valid
        if append_current:
            refs = torch.cat((ref_features, entry))
            all_ref_boxes = torch.cat((ref_boxes, boxes[: self.num_ref_rois]))
            if ref_valid is not None:
                entry_valid = ref_valid.new_ones(len(entry)) if valid is None else valid[: self.num_ref_rois]
                key_mask = torch.cat((ref_valid, entry_valid))
        elif not len(refs):
            raise ValueError("attention without the current rows needs at least one reference")

        num_stages = len(self.fcs)
        geometric_weights = None
        if not self.location_free:
            # Every stage's W_G at once on the shared geometry: [R, M, S·G] -> [S, G, R, M].
            geometry_parameters = [_conv1x1_parameters(conv) for conv in self.Wgs]
            weight = torch.cat([conv_weight.flatten(1) for conv_weight, _ in geometry_parameters])
            bias = torch.cat([conv_bias for _, conv_bias in geometry_parameters])
            projected = F.relu(project_geometry_embedding(box_geometry(boxes, all_ref_boxes), weight, bias))
            geometric_weights = projected.permute(2, 0, 1).reshape(num_stages, self.num_groups, len(x), len(refs))
        logit_bias = attention_bias(geometric_weights, key_mask)  # [S, G, R, M], [M] or None

        for stage in range(num_stages):
            if stage > 0:
                x = F.relu(self.fcs[stage](x))
            stage_bias = logit_bias[stage] if geometric_weights is not None and logit_bias is not None else logit_bias
            x = x + self._attention(stage, x, refs, stage_bias)
        return x, entry

    def _attention(self, stage: int, x: Tensor, refs: Tensor, logit_bias: Tensor | None) -> Tensor:
        """Attn_s: [R, d] queries, [M, d] references -> [R, d].

        The 1x1 convolutions run as matrix products on their weights (same values, no layout
        change): W_G (in ``forward``) on the [R, M, E] geometry; W_V, which maps head g's weighted sum
        of the d-dim references to output channels g·d/G .. (g+1)·d/G - 1, is applied to the
        references first, so each head averages d/G channels instead of d (the same sum, G times less
        work).
        """
        mixing_weight, mixing_bias = _conv1x1_parameters(self.Wvs[stage])
        num_refs, dim = refs.shape
        head_values = F.linear(refs, mixing_weight.flatten(1))  # [M, d]: W_V of every head, applied to refs
        head_values = head_values.view(num_refs, self.num_groups, dim // self.num_groups).transpose(0, 1)
        heads = relation_attention(
            self.Wqs[stage](x), self.Wks[stage](refs), head_values, self.num_groups, logit_bias
        )  # [R, G, d/G]
        return heads.reshape(len(x), dim) + mixing_bias


class STClassifier(nn.Module):
    """Class logits from the ST head's features (background last).

    Args:
        input_size: d of the ST head.
        num_classes: K foreground classes.
    """

    def __init__(self, input_size: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[R, d] -> [R, K + 1] logits."""
        return self.cls_score(x)


def fuse_double_head_probs(p_spatial: Tensor, p_st: Tensor) -> Tensor:
    """Double-head class probabilities (docs/method.md#double-head-and-inference): p_spatial + p_st * (1 - p_spatial).

    Args:
        p_spatial: [R, K + 1] softmax of the spatial head.
        p_st: [R, K + 1] softmax of the ST head.
    Returns:
        [R, K + 1], element-wise.
    """
    return p_spatial + p_st * (1 - p_spatial)


def build_st_box_head(cfg: CfgNode) -> nn.Module:
    """The ST box head the config asks for: ``STAttentionBoxHead`` if
    ``MODEL.SPATIOTEMPORAL.LONG_TERM``, else ``STFCBoxHead``. The config's values are checked by
    ``sltnet.config.validate_config``."""
    st_cfg = cfg.MODEL.SPATIOTEMPORAL
    attention_cfg = st_cfg.ROI_BOX_HEAD.ATTENTION
    input_size = cfg.MODEL.FPN.OUT_CHANNELS * cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION**2
    fc_dim = cfg.MODEL.ROI_BOX_HEAD.FC_DIM
    if not st_cfg.LONG_TERM:
        return STFCBoxHead(input_size, fc_dim)
    return STAttentionBoxHead(
        input_size,
        fc_dim=fc_dim,
        num_stages=attention_cfg.STAGE,
        num_groups=attention_cfg.GROUP,
        embed_dim=attention_cfg.EMBED_DIM,
        num_ref_rois=st_cfg.ROI_BOX_HEAD.REF_POST_NMS_TOP_N,
        location_free=attention_cfg.LOCATION_FREE,
    )
