"""detectron2 / original SLTnet configs as this project's config.

:func:`load_detectron2_config` reads a detectron2 / original SLTnet YAML file. It starts from
detectron2's default values (which differ from this project's for some keys, see
:data:`DETECTRON2_DEFAULTS`), translates the original SLTnet keys that have a counterpart here, refuses
values that would describe a model this project does not build, and names every key it skips in one
:class:`~sltnet.config.loader.ConfigWarning`.
"""

import ast
from collections.abc import Sequence
from typing import Any

from yacs.config import CfgNode

from sltnet.config.loader import ConfigChain, config_from_chain, flatten_values, get_cfg, read_config_chain
from sltnet.errors import SltnetError

#: detectron2's default values (and the original SLTnet's, for ``MODEL.SPATIOTEMPORAL``) where this
#: project's defaults differ: a detectron2 file that does not set such a key means this value.
DETECTRON2_DEFAULTS: dict[str, Any] = {
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32, 64, 128, 256, 512]],
    "MODEL.RPN.IN_FEATURES": ["res4"],
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 12000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 2000,
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeads",
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.IN_FEATURES": ["res4"],
    "MODEL.ROI_BOX_HEAD.NAME": "",
    "MODEL.ROI_BOX_HEAD.NUM_FC": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.SPATIOTEMPORAL.NUM_FRAMES": 1,
    "MODEL.SPATIOTEMPORAL.FREEZE_BACKBONE": False,
    "MODEL.SPATIOTEMPORAL.FREEZE_PROPOSAL_GENERATOR": False,
    "MODEL.SPATIOTEMPORAL.FREEZE_SPATIAL_HEAD": False,
    # The original's default ST box head is the plain 2-FC head.
    "MODEL.SPATIOTEMPORAL.LONG_TERM": False,
    "MODEL.SPATIOTEMPORAL.NUM_KEYFRAMES": 1,
    "MODEL.SPATIOTEMPORAL.KEYFRAME_INTERVAL": 1,
    "INPUT.MIN_SIZE_TRAIN": (800,),
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "DATASETS.TRAIN": (),
    "DATASETS.TEST": (),
    "SOLVER.BASE_LR": 0.001,
    "SOLVER.STEPS": (30000,),
    "SOLVER.MAX_ITER": 40000,
}

#: Keys whose value must be one of these, because the model here is built that way. The ones this
#: project does not have are dropped silently when they hold a supported value.
SUPPORTED_VALUES: dict[str, tuple[Any, ...]] = {
    "MODEL.BACKBONE.NAME": ("build_resnet_fpn_backbone",),
    # ST_RPN: the original SLTnet's RPN over a frame group, which this project's RPN + anchor linking is.
    "MODEL.PROPOSAL_GENERATOR.NAME": ("RPN", "ST_RPN"),
    "MODEL.ROI_HEADS.NAME": ("StandardROIHeads", "StROIHeads"),
    "MODEL.ROI_BOX_HEAD.NAME": ("FastRCNNConvFCHead",),
    "MODEL.MASK_ON": (False,),
    "MODEL.KEYPOINT_ON": (False,),
    "MODEL.LOAD_PROPOSALS": (False,),
    "MODEL.RESNETS.RES5_DILATION": (1,),
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": ([False, False, False, False],),
    "MODEL.FPN.NORM": ("",),
    "MODEL.FPN.FUSE_TYPE": ("sum",),
    "MODEL.ANCHOR_GENERATOR.NAME": ("DefaultAnchorGenerator",),
    "MODEL.ANCHOR_GENERATOR.OFFSET": (0.0,),
    "MODEL.RPN.HEAD_NAME": ("StandardRPNHead",),
    "MODEL.RPN.CONV_DIMS": ([-1],),
    "MODEL.ROI_BOX_HEAD.NUM_CONV": (0,),
    "MODEL.ROI_BOX_HEAD.NORM": ("",),
    "MODEL.SPATIOTEMPORAL.ST_CLS": (True,),
    "MODEL.SPATIOTEMPORAL.ST_CLS_SHORT_TERM_AGGREGATION": (True,),
    "MODEL.SPATIOTEMPORAL.ST_POOLER_TYPE": ("ROIAlignV2",),
    "MODEL.SPATIOTEMPORAL.PROPOSAL_TRACKING": (False,),
    "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.ADVANCED_STAGE": (0,),
}

#: Original keys with a counterpart here: (our key, original value -> our value).
TRANSLATED_KEYS: dict[str, tuple[str, dict[Any, Any]]] = {
    "MODEL.META_ARCHITECTURE": (
        "MODEL.META_ARCHITECTURE",
        {"GeneralizedRCNN": "GeneralizedRCNN", "GeneralizedST_RCNN": "SLTnet"},
    ),
    "MODEL.TUBELET_AGGREGATION_HEAD.NAME": (
        "MODEL.SPATIOTEMPORAL.AGGREGATION",
        {"MaxPoolAggregationHead": "max", "AdaptiveWeightAggregationHead": "adaptive"},
    ),
    # The attention head is what this project calls the long-term head.
    "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.NAME": (
        "MODEL.SPATIOTEMPORAL.LONG_TERM",
        {"AttentionFCHead": True, "FastRCNNConvFCHead": False},
    ),
    "MODEL.SPATIOTEMPORAL.SPATIAL_CLS": ("MODEL.SPATIOTEMPORAL.DOUBLE_HEAD", {True: True, False: False}),
    "INPUT.RANDOM_FLIP": (
        "INPUT.RANDOM_FLIP",
        {True: "horizontal", False: "none", "horizontal": "horizontal", "none": "none"},
    ),
}

#: The original's switch for the keyframe memory; here the memory comes with the attention head.
_ORIGINAL_LONG_TERM = "MODEL.SPATIOTEMPORAL.LONG_TERM"


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """The nested mapping of ``{dotted key: value}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return nested


def _plain(value: Any) -> Any:
    """Tuples as lists, for comparing YAML values with Python defaults."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


_MISSING = object()


def _lookup(cfg: CfgNode, key: str) -> Any:
    """The value at a dotted key, or ``_MISSING``."""
    node: Any = cfg
    for name in key.split("."):
        if not isinstance(node, CfgNode) or name not in node:
            return _MISSING
        node = node[name]
    return node


def _decode(value: Any, default: Any) -> Any:
    """A file value as detectron2 reads it: text holding a Python literal, such as ``(600,)``, is
    that literal unless the key is a text key."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _unsupported(where: str, what: str, supported: Sequence[Any]) -> SltnetError:
    return SltnetError(f"{where}: {what} is not supported (supported: {', '.join(map(repr, supported))})")


def _translate_chain(chain: ConfigChain, origin: str) -> ConfigChain:
    """The files of a detectron2 chain in this project's keys (see :func:`load_detectron2_config`)."""
    base = get_cfg()
    flat_files = [
        (path, {key: _decode(value, _lookup(base, key)) for key, value in flatten_values(values)})
        for path, values in chain
    ]
    # The value of each key the chain sets, and the file that sets it last.
    setting = {key: (value, path) for path, flat in flat_files for key, value in flat.items()}

    for key, supported in SUPPORTED_VALUES.items():
        if key in setting:
            value, where = setting[key]
            if _plain(value) not in [_plain(v) for v in supported]:
                raise _unsupported(where, f"{key} {value!r}", supported)
        elif key in DETECTRON2_DEFAULTS and DETECTRON2_DEFAULTS[key] not in supported:
            default = DETECTRON2_DEFAULTS[key]
            raise _unsupported(origin, f"{key} is not set and detectron2's default {default!r}", supported)

    head, head_file = setting.get("MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.NAME", ("FastRCNNConvFCHead", origin))
    memory, _ = setting.get(_ORIGINAL_LONG_TERM, (False, origin))
    if head == "AttentionFCHead" and memory is not True:
        raise SltnetError(
            f"{head_file}: MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.NAME AttentionFCHead without "
            "MODEL.SPATIOTEMPORAL.LONG_TERM true (attention to the current frame only) is not supported"
        )

    translated = []
    for path, flat in flat_files:
        ours: dict[str, Any] = {}
        for key, value in flat.items():
            if key == _ORIGINAL_LONG_TERM:
                continue
            if key in TRANSLATED_KEYS:
                our_key, values = TRANSLATED_KEYS[key]
                if not isinstance(value, (str, bool)) or value not in values:
                    raise _unsupported(path, f"{key} {value!r}", list(values))
                ours[our_key] = values[value]
            elif key in SUPPORTED_VALUES and _lookup(base, key) is _MISSING:
                continue
            else:
                ours[key] = value
        translated.append((path, _nest(ours)))
    return translated


def detectron2_base_config() -> CfgNode:
    """This project's defaults with :data:`DETECTRON2_DEFAULTS` applied (mutable)."""
    cfg = get_cfg()
    for key, value in DETECTRON2_DEFAULTS.items():
        *parents, leaf = key.split(".")
        node = cfg
        for name in parents:
            node = node[name]
        node[leaf] = value
    return cfg


def load_detectron2_config(config_file: str, overrides: Sequence[str] = ()) -> CfgNode:
    """A detectron2 / original SLTnet YAML file (with its ``_BASE_`` chain) as this project's config.

    Keys this project does not have are skipped and named in one
    :class:`~sltnet.config.loader.ConfigWarning`.

    Raises:
        SltnetError: unreadable file, or a value describing a model this project does not build.
    """
    chain = _translate_chain(read_config_chain(config_file), config_file)
    return config_from_chain(chain, overrides, origin=config_file, base=detectron2_base_config(), allow_unknown=True)
