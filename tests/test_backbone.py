"""ResNet / ResNeXt bottom-up network and FPN (docs/method.md#single-frame-baseline)."""

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from sltnet.config.defaults import _C
from sltnet.errors import SltnetError
from sltnet.modeling.backbone import MsraBottleneck, ResNet, build_backbone


def backbone_cfg(depth=18, groups=1, width=64, freeze_at=2):
    cfg = _C.clone()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NUM_GROUPS = groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    return cfg


@pytest.mark.parametrize(
    "depth, groups, width, res5_channels",
    [(18, 1, 64, 512), (34, 1, 64, 512), (50, 1, 64, 2048), (101, 1, 64, 2048), (101, 32, 8, 2048)],
)
def test_levels_shapes_and_strides(depth, groups, width, res5_channels):
    backbone = build_backbone(backbone_cfg(depth, groups, width))
    assert backbone.bottom_up.out_channels["res5"] == res5_channels
    with torch.no_grad():
        levels = backbone(torch.randn(1, 3, 64, 128))
    assert list(levels) == ["p2", "p3", "p4", "p5", "p6"]
    assert backbone.out_strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for name, level in levels.items():
        stride = backbone.out_strides[name]
        assert level.shape == (1, 32, 64 // stride, 128 // stride)


def test_resnext_blocks_are_grouped_32x8d():
    bottom_up = build_backbone(backbone_cfg(101, 32, 8)).bottom_up
    assert len(bottom_up.res4) == 23
    first = bottom_up.res2[0]
    assert first.conv2.groups == 32 and first.conv2.in_channels == 256
    assert bottom_up.res5[0].conv2.out_channels == 2048


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_stride_placement(stride_in_1x1):
    cfg = backbone_cfg(50)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    block = build_backbone(cfg).bottom_up.res3[0]
    assert isinstance(block, MsraBottleneck) == stride_in_1x1
    assert block.conv1.stride == ((2, 2) if stride_in_1x1 else (1, 1))
    assert block.conv2.stride == ((1, 1) if stride_in_1x1 else (2, 2))


def test_msra_bottleneck_subsamples_before_the_first_conv():
    torch.manual_seed(0)

    def downsample(stride):
        return nn.Sequential(nn.Conv2d(16, 32, 1, stride=stride, bias=False), FrozenBatchNorm2d(32))

    strided = MsraBottleneck(16, 8, stride=2, downsample=downsample(2), norm_layer=FrozenBatchNorm2d)
    unstrided = Bottleneck(16, 8, stride=1, downsample=downsample(1), norm_layer=FrozenBatchNorm2d)
    unstrided.load_state_dict(strided.state_dict())
    x = torch.randn(1, 16, 8, 8)
    # A strided 1x1 convolution only reads every second pixel.
    torch.testing.assert_close(strided(x), unstrided(x[:, :, ::2, ::2]))


@pytest.mark.parametrize(
    "freeze_at, frozen", [(0, []), (1, ["stem"]), (2, ["stem", "res2"]), (3, ["stem", "res2", "res3"])]
)
def test_freeze_at_freezes_exactly_the_bottom_stages(freeze_at, frozen):
    backbone = build_backbone(backbone_cfg(freeze_at=freeze_at))
    for name, parameter in backbone.named_parameters():
        stage = name.split(".")[1] if name.startswith("bottom_up.") else "fpn"
        assert parameter.requires_grad == (stage not in frozen), name


def test_batchnorm_is_frozen():
    backbone = build_backbone(backbone_cfg(freeze_at=0))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    norms = [m for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 1 + 2 * 8 + 3  # stem, two per basic block, three projection shortcuts
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "bn" in k or "downsample.1" in k}
    backbone.train()
    sum(level.sum() for level in backbone(torch.randn(2, 3, 64, 64)).values()).backward()
    after = backbone.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if ".bn" in n)


def test_p6_is_stride_two_subsampling_of_p5():
    backbone = build_backbone(backbone_cfg())
    with torch.no_grad():
        levels = backbone(torch.randn(1, 3, 128, 128))
    torch.testing.assert_close(levels["p6"], F.max_pool2d(levels["p5"], kernel_size=1, stride=2))
    torch.testing.assert_close(levels["p6"], levels["p5"][:, :, ::2, ::2])


def test_state_dict_names():
    names = set(build_backbone(backbone_cfg(50)).state_dict())
    for expected in (
        "bottom_up.stem.conv1.weight",
        "bottom_up.stem.bn1.running_var",
        "bottom_up.res2.0.conv1.weight",
        "bottom_up.res2.0.downsample.0.weight",
        "bottom_up.res5.2.bn3.bias",
        "fpn.inner_blocks.0.0.weight",
        "fpn.layer_blocks.3.0.bias",
    ):
        assert expected in names


def test_load_torchvision_weights(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    bottom_up = ResNet(18, ["res2", "res3", "res4", "res5"])
    bottom_up.load_pretrained(str(path))
    torch.testing.assert_close(bottom_up.stem.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(bottom_up.res3[0].downsample[0].weight, reference.layer2[0].downsample[0].weight)
    torch.testing.assert_close(bottom_up.res5[1].bn2.running_mean, reference.layer4[1].bn2.running_mean)
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    # torchvision's ResNet up to layer4 computes exactly the bottom-up's res5 (stride in the 3x3 here).
    trunk = nn.Sequential(*list(reference.children())[:-2])
    bottom_up_v15 = ResNet(18, ["res2", "res3", "res4", "res5"], stride_in_1x1=False)
    bottom_up_v15.load_pretrained(str(path))
    with torch.no_grad():
        torch.testing.assert_close(bottom_up_v15(x)["res5"], trunk(x))


def test_load_own_and_detector_names(tmp_path):
    source = ResNet(18, ["res2", "res3", "res4", "res5"])
    own, detector = tmp_path / "own.pth", tmp_path / "detector.pth"
    torch.save(source.state_dict(), own)
    torch.save({f"backbone.bottom_up.{k}": v for k, v in source.state_dict().items()}, detector)
    for path in (own, detector):
        target = ResNet(18, ["res2", "res3", "res4", "res5"])
        target.load_pretrained(str(path))
        torch.testing.assert_close(target.res4[1].conv2.weight, source.res4[1].conv2.weight)


def test_pretrained_file_in_config_is_loaded(tmp_path):
    source = ResNet(18, ["res2", "res3", "res4", "res5"])
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    cfg = backbone_cfg()
    cfg.MODEL.BACKBONE.PRETRAINED = str(path)
    torch.testing.assert_close(build_backbone(cfg).bottom_up.res2[0].conv1.weight, source.res2[0].conv1.weight)


def test_pretrained_errors(tmp_path):
    bottom_up = ResNet(18, ["res2", "res3", "res4", "res5"])
    missing = tmp_path / "nope.pth"
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint\nat all")
    wrong_depth = tmp_path / "r34.pth"
    torch.save(ResNet(34, ["res2", "res3", "res4", "res5"]).state_dict(), wrong_depth)
    wrong_width = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong_width)
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state_dict)
    cases = [
        (missing, f"{missing}: pretrained weights file not found"),
        (garbage, f"{garbage}: cannot read pretrained weights ("),
        (not_a_state_dict, f"{not_a_state_dict}: not a state dict of tensors"),
        (wrong_depth, f"{wrong_depth}: does not fit ResNet-18 (80 unexpected (first: res2.2.bn1.bias))"),
        (wrong_width, f"{wrong_width}: does not fit ResNet-18 ("),
    ]
    for path, message in cases:
        with pytest.raises(SltnetError) as info:
            bottom_up.load_pretrained(str(path))
        assert str(info.value).startswith(message)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("DEPTH", 42, "MODEL.RESNETS.DEPTH: must be one of [18, 34, 50, 101, 152], got 42"),
        ("NORM", "BN", "MODEL.RESNETS.NORM: only 'FrozenBN' is supported, got 'BN'"),
        (
            "RES2_OUT_CHANNELS",
            256,
            "MODEL.RESNETS.RES2_OUT_CHANNELS: must be MODEL.RESNETS.STEM_OUT_CHANNELS (64) for depth 18, got 256",
        ),
        ("NUM_GROUPS", 32, "MODEL.RESNETS: depth 18 needs NUM_GROUPS 1 and WIDTH_PER_GROUP 64"),
        ("OUT_FEATURES", ["res2", "res3", "res4"], "MODEL.FPN.IN_FEATURES: ['res5'] not in MODEL.RESNETS.OUT_FEATURES"),
    ],
)
def test_config_errors(key, value, message):
    cfg = backbone_cfg()
    cfg.MODEL.RESNETS[key] = value
    with pytest.raises(SltnetError) as info:
        build_backbone(cfg)
    assert str(info.value) == message
