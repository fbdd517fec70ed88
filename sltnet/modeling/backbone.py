"""ResNet / ResNeXt bottom-up network and FPN (docs/method.md#single-frame-baseline).

State-dict names (under the detector's ``backbone.`` prefix):

- ``bottom_up.stem.conv1``, ``bottom_up.stem.bn1``: 7x7/2 convolution and its frozen BatchNorm; a
  3x3/2 max-pool follows (no parameters).
- ``bottom_up.res{2..5}.{block}.conv{1,2[,3]}`` / ``.bn{1,2[,3]}``: torchvision ``BasicBlock``
  (depth 18, 34) or ``Bottleneck`` (50, 101, 152) blocks; ``.downsample.0`` (1x1 conv) and
  ``.downsample.1`` (BatchNorm) form the projection shortcut of a stage's first block.
- ``fpn.inner_blocks.{i}.0``: lateral 1x1 convolution of level P(i + 2);
  ``fpn.layer_blocks.{i}.0``: its 3x3 output convolution (torchvision ``FeaturePyramidNetwork``).

Every BatchNorm is a ``FrozenBatchNorm2d``: fixed statistics and affine parameters, stored as buffers.
"""

import os
import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from yacs.config import CfgNode

from sltnet.errors import SltnetError

# Blocks per stage res2..res5 for each supported depth.
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


class MsraBottleneck(Bottleneck):
    """torchvision's ``Bottleneck`` with the stride in the first 1x1 convolution instead of the 3x3.

    The original MSRA ResNets (and detectron2 with ``STRIDE_IN_1X1``) downsample in ``conv1``;
    torchvision's "ResNet v1.5" does it in ``conv2``. Parameters and names are identical, only the
    convolution strides move: ``STRIDE_IN_1X1`` must match how the loaded weights were trained.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conv1.stride = (self.stride, self.stride)
        self.conv2.stride = (1, 1)


class BasicStem(nn.Module):
    """7x7/2 convolution, frozen BatchNorm, ReLU, 3x3/2 max-pool: [B, 3, H, W] -> [B, C, H/4, W/4]."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet / ResNeXt bottom-up network with stages ``res2`` .. ``res5`` (strides 4 .. 32).

    Args:
        depth: 18, 34 (basic blocks), 50, 101 or 152 (bottleneck blocks).
        out_features: stage names returned by ``forward``; stages after the last one are not built.
        num_groups: groups of the 3x3 convolutions (32 for ResNeXt-101 32x8d).
        width_per_group: channels per group in ``res2`` (8 for ResNeXt-101 32x8d); doubles per stage.
        stride_in_1x1: downsample in the first 1x1 convolution of a bottleneck (MSRA weights).
        stem_out_channels: channels of the stem output.
        res2_out_channels: channels of ``res2``'s output, doubling per stage: 256 for bottleneck
            networks; for basic-block networks the stem's width (64 in ResNet-18/34, less for a
            narrower network).
    """

    def __init__(
        self,
        depth: int,
        out_features: Sequence[str],
        num_groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        stem_out_channels: int = 64,
        res2_out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.out_features = list(out_features)
        if depth >= 50:
            block: type[BasicBlock | Bottleneck] = MsraBottleneck if stride_in_1x1 else Bottleneck
        else:
            block = BasicBlock
        if res2_out_channels is None:
            res2_out_channels = 64 * block.expansion
        self.stem = BasicStem(stem_out_channels)
        self.out_channels: dict[str, int] = {}
        in_channels = stem_out_channels
        num_stages = max(STAGE_NAMES.index(name) for name in self.out_features) + 1
        self.stage_names = list(STAGE_NAMES[:num_stages])
        for index, (name, num_blocks) in enumerate(zip(self.stage_names, STAGE_BLOCKS[depth])):
            planes = res2_out_channels // block.expansion * 2**index
            stride = 1 if index == 0 else 2
            out_channels = planes * block.expansion
            blocks = []
            for block_index in range(num_blocks):
                downsample = None
                if block_index == 0 and (stride != 1 or in_channels != out_channels):
                    downsample = nn.Sequential(
                        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                        FrozenBatchNorm2d(out_channels),
                    )
                blocks.append(
                    block(
                        in_channels,
                        planes,
                        stride=stride if block_index == 0 else 1,
                        downsample=downsample,
                        groups=num_groups,
                        base_width=width_per_group,
                        norm_layer=FrozenBatchNorm2d,
                    )
                )
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = out_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {stage name: [B, C_s, H / stride_s, W / stride_s]} for ``out_features``."""
        outputs = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs

    def freeze(self, freeze_at: int) -> None:
        """Stop training the stem (``freeze_at`` >= 1) and the stages res2 .. res``freeze_at``."""
        frozen = (["stem"] + self.stage_names)[:freeze_at]
        for name in frozen:
            getattr(self, name).requires_grad_(False)

    def load_pretrained(self, path: str) -> None:
        """Load ImageNet weights from a local file.

        Accepts a torchvision ResNet state dict (``conv1``, ``bn1``, ``layer1`` .. ``layer4``; ``fc`` is
        ignored) or one with this module's names, optionally prefixed ``backbone.bottom_up.``.
        torchvision weights expect RGB input with torchvision's mean/std and ``STRIDE_IN_1X1 False``.

        Raises:
            SltnetError: the file is missing, unreadable, or its tensors do not fit this network.
        """
        if not os.path.isfile(path):
            raise SltnetError(f"{path}: pretrained weights file not found")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt or foreign files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SltnetError(f"{path}: cannot read pretrained weights ({reason})") from exc
        if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
            raise SltnetError(f"{path}: not a state dict of tensors")
        state = {_to_bottom_up_name(k): v for k, v in loaded.items() if not _is_unused_torchvision_key(k)}
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        problems = [
            f"{len(keys)} {what} (first: {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("with a wrong shape", wrong_shape))
            if keys
        ]
        if problems:
            raise SltnetError(f"{path}: does not fit ResNet-{self.depth} ({'; '.join(problems)})")
        self.load_state_dict(state)


def _is_unused_torchvision_key(key: str) -> bool:
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


def _to_bottom_up_name(key: str) -> str:
    """Map a torchvision ResNet or full-detector key to this module's name (others unchanged)."""
    key = key.removeprefix("backbone.bottom_up.")
    key = re.sub(r"^(conv1|bn1)\.", r"stem.\1.", key)
    return re.sub(r"^layer([1-4])\.", lambda m: f"res{int(m.group(1)) + 1}.", key)


class FPNBackbone(nn.Module):
    """Bottom-up network + FPN: levels P2..P5 from res2..res5 and P6 = max-pool(k1, s2) of P5.

    The top-down path upsamples with nearest neighbour to each lateral's size, which equals detectron2's
    2x upsampling for inputs padded to a multiple of 32.

    Args:
        bottom_up: the ResNet.
        in_features: bottom-up stages feeding the FPN, finest first (res2..res5).
        out_channels: channels of every FPN level (256).
    """

    def __init__(self, bottom_up: ResNet, in_features: Sequence[str], out_channels: int) -> None:
        super().__init__()
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.fpn = FeaturePyramidNetwork(
            [bottom_up.out_channels[name] for name in self.in_features], out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels
        levels = [int(name[len("res") :]) for name in self.in_features]
        self.out_features = [f"p{level}" for level in levels] + [f"p{levels[-1] + 1}"]
        self.out_strides = {f"p{level}": 2**level for level in levels + [levels[-1] + 1]}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] (H, W multiples of 32) -> {"p2": [B, C, H/4, W/4], ..., "p6": [B, C, H/64, W/64]}."""
        bottom_up_features = self.bottom_up(images)
        fpn_input = OrderedDict((name, bottom_up_features[name]) for name in self.in_features)
        # The FPN names its extra max-pool level "pool"; the output keeps its own level names.
        return dict(zip(self.out_features, self.fpn(fpn_input).values()))


def build_backbone(cfg: CfgNode) -> FPNBackbone:
    """ResNet/ResNeXt + FPN from ``MODEL.RESNETS``, ``MODEL.FPN`` and ``MODEL.BACKBONE``.

    Raises:
        SltnetError: unsupported option values, or a bad ``MODEL.BACKBONE.PRETRAINED`` file.
    """
    resnets = cfg.MODEL.RESNETS
    depth = resnets.DEPTH
    if depth not in STAGE_BLOCKS:
        raise SltnetError(f"MODEL.RESNETS.DEPTH: must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
    if resnets.NORM != "FrozenBN":
        raise SltnetError(f"MODEL.RESNETS.NORM: only 'FrozenBN' is supported, got {resnets.NORM!r}")
    # Basic blocks: res2 keeps the stem's width (no projection); bottlenecks: 4 x 64 channels.
    res2_channels = resnets.STEM_OUT_CHANNELS if depth < 50 else 256
    if resnets.RES2_OUT_CHANNELS != res2_channels:
        got = resnets.RES2_OUT_CHANNELS
        need = f"MODEL.RESNETS.STEM_OUT_CHANNELS ({res2_channels})" if depth < 50 else str(res2_channels)
        raise SltnetError(f"MODEL.RESNETS.RES2_OUT_CHANNELS: must be {need} for depth {depth}, got {got}")
    if depth < 50 and (resnets.NUM_GROUPS != 1 or resnets.WIDTH_PER_GROUP != 64):
        raise SltnetError(f"MODEL.RESNETS: depth {depth} needs NUM_GROUPS 1 and WIDTH_PER_GROUP 64")
    unknown = [name for name in cfg.MODEL.FPN.IN_FEATURES if name not in resnets.OUT_FEATURES]
    if unknown:
        raise SltnetError(f"MODEL.FPN.IN_FEATURES: {unknown} not in MODEL.RESNETS.OUT_FEATURES")
    bottom_up = ResNet(
        depth,
        resnets.OUT_FEATURES,
        num_groups=resnets.NUM_GROUPS,
        width_per_group=resnets.WIDTH_PER_GROUP,
        stride_in_1x1=resnets.STRIDE_IN_1X1,
        stem_out_channels=resnets.STEM_OUT_CHANNELS,
        res2_out_channels=resnets.RES2_OUT_CHANNELS,
    )
    if cfg.MODEL.BACKBONE.PRETRAINED:
        bottom_up.load_pretrained(cfg.MODEL.BACKBONE.PRETRAINED)
    bottom_up.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
    return FPNBackbone(bottom_up, cfg.MODEL.FPN.IN_FEATURES, cfg.MODEL.FPN.OUT_CHANNELS)
