"""Import models trained with detectron2 and the original SLTnet code: checkpoints and configs.

Checkpoints: a ``model_final.pth`` (``torch.save`` of a dict whose ``model`` entry is the state dict,
beside ``iteration``, ``optimizer``, ...) or a model-zoo ``.pkl`` (a pickle of
``{"model": {name: numpy array}, "__author__": ...}``). :data:`NAME_MAP` pairs every parameter name of
this project's models with detectron2's; :func:`d2_to_sltnet` and :func:`sltnet_to_d2` rename a state
dict either way, and :func:`convert_d2_state` checks the result against the model a config describes.

Configs: :func:`load_detectron2_config` reads a detectron2 / original SLTnet YAML file. It starts from
detectron2's default values (which differ from this project's for some keys, see
:data:`DETECTRON2_DEFAULTS`), translates the original SLTnet keys that have a counterpart here, refuses
values that would describe a model this project does not build, and names every key it skips in one
:class:`~sltnet.config.loader.ConfigWarning`.

Class order is the same on both sides: K + 1 logits with background last, 4K class-specific deltas,
classes in ascending category-id order.
"""

import ast
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from yacs.config import CfgNode

from sltnet.config.loader import ConfigChain, config_from_chain, flatten_values, get_cfg, read_config_chain
from sltnet.errors import SltnetError
from sltnet.modeling.backbone import STAGE_BLOCKS
from sltnet.modeling.build import build_model

StateDict = Dict[str, Tensor]

#: Stages feeding detectron2's FPN by default (``fpn_lateral2`` .. ``fpn_lateral5``).
DEFAULT_FPN_STAGES = (2, 3, 4, 5)

# ---------------------------------------------------------------------------------------------
# Parameter names
# ---------------------------------------------------------------------------------------------


class NameRule(NamedTuple):
    """One family of parameter names: ``ours`` and ``detectron2`` with ``{field}`` parts in common.

    ``st_head`` limits the rule to one kind of ST box head ("attention" or "fc") when renaming to
    detectron2, where the two kinds name their FC layers differently.
    """

    ours: str
    detectron2: str
    st_head: Optional[str] = None


#: What each ``{field}`` of a rule matches.
FIELDS = {
    "bn": r"weight|bias|running_mean|running_var",
    "param": r"weight|bias",
    "stage": r"[2-5]",
    "block": r"\d+",
    "conv": r"[1-3]",
    "fpn": r"\d+",
    "rpn_layer": r"conv|objectness_logits|anchor_deltas",
    "box_fc": r"fc1|fc2",
    "predictor": r"cls_score|bbox_pred",
    "projection": r"Wgs|Wqs|Wks|Wvs",
    "index": r"\d+",
    "fc": r"\d+",
}

#: Our names and detectron2's. ``{fpn}`` is the FPN input's index here (0 for the first) and its
#: stage number in detectron2 (``fpn_lateral2``); ``{fc}`` of the plain ST head is 0-based here and
#: 1-based in detectron2 (``fc1``).
NAME_MAP: Tuple[NameRule, ...] = (
    NameRule("backbone.bottom_up.stem.conv1.weight", "backbone.bottom_up.stem.conv1.weight"),
    NameRule("backbone.bottom_up.stem.bn1.{bn}", "backbone.bottom_up.stem.conv1.norm.{bn}"),
    NameRule(
        "backbone.bottom_up.res{stage}.{block}.conv{conv}.weight",
        "backbone.bottom_up.res{stage}.{block}.conv{conv}.weight",
    ),
    NameRule(
        "backbone.bottom_up.res{stage}.{block}.bn{conv}.{bn}",
        "backbone.bottom_up.res{stage}.{block}.conv{conv}.norm.{bn}",
    ),
    NameRule(
        "backbone.bottom_up.res{stage}.{block}.downsample.0.weight",
        "backbone.bottom_up.res{stage}.{block}.shortcut.weight",
    ),
    NameRule(
        "backbone.bottom_up.res{stage}.{block}.downsample.1.{bn}",
        "backbone.bottom_up.res{stage}.{block}.shortcut.norm.{bn}",
    ),
    NameRule("backbone.fpn.inner_blocks.{fpn}.0.{param}", "backbone.fpn_lateral{fpn}.{param}"),
    NameRule("backbone.fpn.layer_blocks.{fpn}.0.{param}", "backbone.fpn_output{fpn}.{param}"),
    NameRule("rpn.head.{rpn_layer}.{param}", "proposal_generator.rpn_head.{rpn_layer}.{param}"),
    NameRule("roi_heads.box_head.{box_fc}.{param}", "roi_heads.box_head.{box_fc}.{param}"),
    NameRule("roi_heads.box_predictor.{predictor}.{param}", "roi_heads.box_predictor.{predictor}.{param}"),
    NameRule("st_box_head.fcs.{index}.{param}", "roi_heads.st_box_head.fcs.{index}.{param}", "attention"),
    NameRule("st_box_head.{projection}.{index}.{param}", "roi_heads.st_box_head.{projection}.{index}.{param}"),
    NameRule("st_box_head.fcs.{fc}.{param}", "roi_heads.st_box_head.fc{fc}.{param}", "fc"),
    NameRule("st_cls_predictor.cls_score.{param}", "roi_heads.st_cls_predictor.cls_score.{param}"),
)

#: detectron2 state-dict entries that are no weights of the network: BatchNorm step counters,
#: anchors (derived from the config; old checkpoints stored them) and the input normalisation
#: (compared with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` when a config is given).
IGNORED_D2_NAMES = re.compile(
    r"(^|\.)num_batches_tracked$|^proposal_generator\.anchor_generator\.cell_anchors\.\d+$|^pixel_(mean|std)$"
)

_FIELD_REFERENCE = re.compile(r"\{(\w+)\}")


def _pattern(template: str) -> "re.Pattern[str]":
    """A regex matching the names ``template`` stands for, one named group per field."""
    parts = _FIELD_REFERENCE.split(template)
    regex = "".join(
        re.escape(part) if index % 2 == 0 else f"(?P<{part}>{FIELDS[part]})" for index, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


_OURS_PATTERNS = [_pattern(rule.ours) for rule in NAME_MAP]
_D2_PATTERNS = [_pattern(rule.detectron2) for rule in NAME_MAP]


def _field_to_d2(field: str, value: str, fpn_stages: Sequence[int]) -> Optional[str]:
    if field == "fpn":
        index = int(value)
        return str(fpn_stages[index]) if index < len(fpn_stages) else None
    if field == "fc":
        return str(int(value) + 1)
    return value


def _field_to_ours(field: str, value: str, fpn_stages: Sequence[int]) -> Optional[str]:
    if field == "fpn":
        return str(list(fpn_stages).index(int(value))) if int(value) in fpn_stages else None
    if field == "fc":
        return str(int(value) - 1) if int(value) > 0 else None
    return value


def _rename(name: str, to_d2: bool, fpn_stages: Sequence[int], st_head: Optional[str]) -> Optional[str]:
    """The other side's name for ``name``, or None when no rule covers it."""
    patterns = _OURS_PATTERNS if to_d2 else _D2_PATTERNS
    convert = _field_to_d2 if to_d2 else _field_to_ours
    for rule, pattern in zip(NAME_MAP, patterns, strict=True):
        if to_d2 and rule.st_head not in (None, st_head):
            continue
        match = pattern.match(name)
        if match is None:
            continue
        fields = {field: convert(field, value, fpn_stages) for field, value in match.groupdict().items()}
        if None in fields.values():
            return None
        return (rule.detectron2 if to_d2 else rule.ours).format(**fields)
    return None


def d2_to_sltnet(state: StateDict, fpn_stages: Sequence[int] = DEFAULT_FPN_STAGES) -> Tuple[StateDict, List[str]]:
    """Rename a detectron2 state dict to this project's names.

    Args:
        state: detectron2 names -> tensors (the ``model`` entry of a checkpoint); entries matching
            :data:`IGNORED_D2_NAMES` are left out.
        fpn_stages: stage numbers of the FPN inputs, finest first (``MODEL.FPN.IN_FEATURES``).
    Returns:
        the renamed state dict (same tensors) and the detectron2 names no rule covers.
    """
    renamed, unmapped = {}, []
    for name, tensor in state.items():
        if IGNORED_D2_NAMES.search(name):
            continue
        ours = _rename(name, False, fpn_stages, None)
        if ours is None:
            unmapped.append(name)
        else:
            renamed[ours] = tensor
    return renamed, unmapped


def sltnet_to_d2(state: StateDict, fpn_stages: Sequence[int] = DEFAULT_FPN_STAGES) -> Tuple[StateDict, List[str]]:
    """Rename one of this project's state dicts to detectron2's (original SLTnet's) names.

    An ST box head with attention projections keeps ``fcs.{i}``; the plain 2-FC ST head becomes
    detectron2's ``fc1`` / ``fc2``.

    Returns:
        the renamed state dict (same tensors) and our names no rule covers.
    """
    st_head = "attention" if any(name.startswith("st_box_head.Wqs.") for name in state) else "fc"
    renamed, unmapped = {}, []
    for name, tensor in state.items():
        d2_name = _rename(name, True, fpn_stages, st_head)
        if d2_name is None:
            unmapped.append(name)
        else:
            renamed[d2_name] = tensor
    return renamed, unmapped


# ---------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------

# What a model-zoo pickle may construct: numpy arrays and scalars, ordered dicts, and the bytes that
# Python 3 writes through _codecs.encode in protocol-2 pickles.
_ARRAY_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds nothing but containers and numpy arrays (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name} refused")
        return super().find_class(module, name)


# How both torch's weights-only loader and _ArrayUnpickler name the object they refused.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unpickle(path: Path, allow_pickle: bool) -> Any:
    """What a checkpoint file holds: a model-zoo pickle for ``.pkl``, ``torch.save`` output otherwise."""
    try:
        if path.suffix != ".pkl":
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        with open(path, "rb") as stream:
            unpickler = pickle.Unpickler if allow_pickle else _ArrayUnpickler
            return unpickler(stream, encoding="latin1").load()
    except Exception as err:  # unpickling raises several types for corrupt or foreign files
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused is not None and not allow_pickle:
            raise SltnetError(
                f"{path}: holds Python objects other than tensors and arrays ({refused.group(1)}); "
                "if the file comes from a source you trust, pass --allow-pickle"
            ) from None
        raise SltnetError(f"{path}: not a readable checkpoint ({_first_line(err)})") from None


def read_d2_checkpoint(path: Union[str, Path], allow_pickle: bool = False) -> StateDict:
    """The detectron2-named state dict of a checkpoint file, as CPU tensors.

    ``.pkl`` files are read as model-zoo pickles (numpy arrays become tensors), anything else with
    ``torch.load``. Non-model entries (``iteration``, ``optimizer``, ``__author__``...) are dropped;
    a ``module.`` prefix that every name has (a model saved inside DistributedDataParallel) is removed.

    Args:
        allow_pickle: the file is trusted: let it build any Python object (needed only for
            checkpoints that pickled more than tensors, arrays and plain values).
    Raises:
        SltnetError: missing or unreadable file, a Caffe2/Detectron1 model (other names), or
            entries that are no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise SltnetError(f"{path}: checkpoint not found")
    loaded = _unpickle(path, allow_pickle)
    if not isinstance(loaded, dict):
        raise SltnetError(f"{path}: expected a dict with a 'model' entry, got {type(loaded).__name__}")
    # Caffe2 / Detectron1 detection models keep their weights under "blobs".
    model = loaded.get("model", loaded.get("blobs", loaded))
    if not isinstance(model, dict) or not model:
        raise SltnetError(f"{path}: the 'model' entry is not a non-empty dict of tensors")
    if not any("." in str(name) for name in model):
        raise SltnetError(
            f"{path}: Caffe2/Detectron1 names (e.g. {next(iter(model))}); "
            "only detectron2-named checkpoints are supported"
        )
    state = {}
    for name, value in model.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise SltnetError(f"{path}: model entry {name} is a {type(value).__name__}, not a tensor or array")
        state[str(name)] = value
    if all(name.startswith("module.") for name in state):
        state = {name[len("module.") :]: value for name, value in state.items()}
    return state


# ---------------------------------------------------------------------------------------------
# Checking a converted state dict
# ---------------------------------------------------------------------------------------------


class Conversion(NamedTuple):
    """A detectron2 state dict renamed and checked.

    Attributes:
        state: the tensors that map and fit, under our names.
        problems: one line per key that does not map, is missing, or has the wrong shape (empty when
            the conversion is complete).
        notes: what was filled in or left out on purpose.
    """

    state: StateDict
    problems: List[str]
    notes: List[str]


def fpn_stages_of(cfg: CfgNode) -> Tuple[int, ...]:
    """Stage numbers of ``MODEL.FPN.IN_FEATURES`` (``res2`` -> 2)."""
    return tuple(int(name[len("res") :]) for name in cfg.MODEL.FPN.IN_FEATURES)


def model_shapes(cfg: CfgNode) -> Dict[str, torch.Size]:
    """Name -> shape of every state-dict entry of the model ``cfg`` describes (built without memory)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.PRETRAINED = ""
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _fill_running_stats(state: StateDict) -> List[str]:
    """Give FrozenBatchNorm layers without running statistics mean 0 and variance 1 (the identity,
    as detectron2 does for early checkpoints). Returns the layers filled in."""
    filled = []
    for name in [n for n in state if re.search(r"(bn\d|downsample\.1)\.weight$", n)]:
        prefix = name[: -len("weight")]
        if prefix + "running_mean" not in state and prefix + "running_var" not in state:
            state[prefix + "running_mean"] = torch.zeros_like(state[name])
            state[prefix + "running_var"] = torch.ones_like(state[name])
            filled.append(prefix.rstrip("."))
    return filled


def _pixel_problems(d2_state: StateDict, cfg: CfgNode) -> List[str]:
    problems = []
    for name, key in (("pixel_mean", "PIXEL_MEAN"), ("pixel_std", "PIXEL_STD")):
        if name in d2_state:
            stored = [round(float(v), 3) for v in d2_state[name].flatten()]
            configured = [round(float(v), 3) for v in cfg.MODEL[key]]
            if stored != configured:
                problems.append(f"{name} {stored} in the checkpoint, MODEL.{key} {configured} in the config")
    return problems


def convert_d2_state(d2_state: StateDict, cfg: Optional[CfgNode] = None) -> Conversion:
    """Rename a detectron2 state dict and check it against the model ``cfg`` describes.

    Without ``cfg`` only the names are checked (every detectron2 name must map).

    Args:
        d2_state: from :func:`read_d2_checkpoint`.
        cfg: the model's config (:func:`load_detectron2_config` or this project's).
    """
    fpn_stages = fpn_stages_of(cfg) if cfg is not None else DEFAULT_FPN_STAGES
    state, unmapped = d2_to_sltnet(d2_state, fpn_stages)
    problems = [f"unmapped detectron2 key {name}" for name in unmapped]
    notes = [f"{layer}: no running statistics, set to mean 0 / variance 1" for layer in _fill_running_stats(state)]
    if cfg is None:
        return Conversion(state, problems, notes)

    problems += _pixel_problems(d2_state, cfg)
    expected = model_shapes(cfg)
    st_head = "attention" if "st_box_head.Wqs.0.weight" in expected else "fc"

    def named(name: str) -> str:
        d2_name = _rename(name, True, fpn_stages, st_head)
        return name if d2_name in (None, name) else f"{name} (detectron2 {d2_name})"

    location_free = (
        cfg.MODEL.META_ARCHITECTURE == "SLTnet" and cfg.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.LOCATION_FREE
    )
    for name in [n for n in state if n not in expected]:
        del state[name]
        if location_free and name.startswith("st_box_head.Wgs."):
            # The original code builds W_G even when LOCATION_FREE leaves it unused.
            notes.append(f"{named(name)}: unused with LOCATION_FREE, left out")
        else:
            problems.append(f"{named(name)} is not in the model")
    for name, shape in expected.items():
        if name not in state:
            problems.append(f"missing {named(name)}")
        elif state[name].shape != shape:
            problems.append(
                f"{named(name)}: shape {tuple(state[name].shape)} in the checkpoint, {tuple(shape)} in the model"
            )
            del state[name]
    return Conversion(state, problems, notes)


def describe_state(state: StateDict) -> str:
    """A short description of the network a (converted) state dict holds, e.g.
    ``ResNet-101, 30 classes, ST head with attention (2 stages)``."""
    blocks = {}
    for name in state:
        match = re.match(r"backbone\.bottom_up\.res(\d)\.(\d+)\.", name)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    counts = tuple(len(blocks.get(stage, ())) for stage in (2, 3, 4, 5))
    bottleneck = any(".conv3." in name for name in state)
    depths = [d for d, c in STAGE_BLOCKS.items() if c == counts and (d >= 50) == bottleneck]
    parts = [f"ResNet-{depths[0]}" if depths else f"ResNet with {counts} blocks per stage"]
    if "roi_heads.box_predictor.cls_score.weight" in state:
        parts.append(f"{state['roi_heads.box_predictor.cls_score.weight'].shape[0] - 1} classes")
    if "st_box_head.Wqs.0.weight" in state:
        stages = len({n for n in state if n.startswith("st_box_head.Wqs.") and n.endswith(".weight")})
        parts.append(f"ST head with attention ({stages} stages)")
    elif "st_box_head.fcs.0.weight" in state:
        parts.append("2-FC ST head")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

#: detectron2's default values (and the original SLTnet's, for ``MODEL.SPATIOTEMPORAL``) where this
#: project's defaults differ: a detectron2 file that does not set such a key means this value.
DETECTRON2_DEFAULTS: Dict[str, Any] = {
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
SUPPORTED_VALUES: Dict[str, Tuple[Any, ...]] = {
    "MODEL.BACKBONE.NAME": ("build_resnet_fpn_backbone",),
    "MODEL.PROPOSAL_GENERATOR.NAME": ("RPN",),
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
TRANSLATED_KEYS: Dict[str, Tuple[str, Dict[Any, Any]]] = {
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


def _nest(flat: Dict[str, Any]) -> Dict[str, Any]:
    """The nested mapping of ``{dotted key: value}``."""
    nested: Dict[str, Any] = {}
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
        ours: Dict[str, Any] = {}
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
