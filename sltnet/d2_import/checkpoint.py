"""detectron2 / original SLTnet checkpoints: read them, rename their parameters, check the result.

Checkpoints: a ``model_final.pth`` (``torch.save`` of a dict whose ``model`` entry is the state dict,
beside ``iteration``, ``optimizer``, ...) or a model-zoo ``.pkl`` (a pickle of
``{"model": {name: numpy array}, "__author__": ...}``). :data:`NAME_MAP` pairs every parameter name of
this project's models with detectron2's; :func:`d2_to_sltnet` and :func:`sltnet_to_d2` rename a state
dict either way, and :func:`convert_d2_state` checks the result against the model a config describes.

Class order is the same on both sides: K + 1 logits with background last, 4K class-specific deltas,
classes in ascending category-id order.
"""

import pickle
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from yacs.config import CfgNode

from sltnet.errors import SltnetError
from sltnet.modeling.backbone import STAGE_BLOCKS
from sltnet.modeling.build import build_model

StateDict = dict[str, Tensor]

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
    st_head: str | None = None


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
NAME_MAP: tuple[NameRule, ...] = (
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


def _field_to_d2(field: str, value: str, fpn_stages: Sequence[int]) -> str | None:
    if field == "fpn":
        index = int(value)
        return str(fpn_stages[index]) if index < len(fpn_stages) else None
    if field == "fc":
        return str(int(value) + 1)
    return value


def _field_to_ours(field: str, value: str, fpn_stages: Sequence[int]) -> str | None:
    if field == "fpn":
        return str(list(fpn_stages).index(int(value))) if int(value) in fpn_stages else None
    if field == "fc":
        return str(int(value) - 1) if int(value) > 0 else None
    return value


def _rename(name: str, to_d2: bool, fpn_stages: Sequence[int], st_head: str | None) -> str | None:
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


def d2_to_sltnet(state: StateDict, fpn_stages: Sequence[int] = DEFAULT_FPN_STAGES) -> tuple[StateDict, list[str]]:
    """Rename a detectron2 state dict to this project's names.

    Args:
        state: detectron2 names -> tensors (the ``model`` entry of a checkpoint); entries matching
            :data:`IGNORED_D2_NAMES` are left out.
        fpn_stages: stage numbers of the FPN inputs, finest first (``MODEL.FPN.IN_FEATURES``).
    Returns:
        the renamed state dict (same tensors) and the detectron2 names no rule covers.
    """
    kept = {name: tensor for name, tensor in state.items() if not IGNORED_D2_NAMES.search(name)}
    return _rename_all(kept, lambda name: _rename(name, False, fpn_stages, None))


def sltnet_to_d2(state: StateDict, fpn_stages: Sequence[int] = DEFAULT_FPN_STAGES) -> tuple[StateDict, list[str]]:
    """Rename one of this project's state dicts to detectron2's (original SLTnet's) names.

    An ST box head with attention projections keeps ``fcs.{i}``; the plain 2-FC ST head becomes
    detectron2's ``fc1`` / ``fc2``.

    Returns:
        the renamed state dict (same tensors) and our names no rule covers.
    """
    st_head = "attention" if any(name.startswith("st_box_head.Wqs.") for name in state) else "fc"
    return _rename_all(state, lambda name: _rename(name, True, fpn_stages, st_head))


def _rename_all(state: StateDict, rename: Callable[[str], str | None]) -> tuple[StateDict, list[str]]:
    """``state`` under the names ``rename`` gives, and the names it has no rule for."""
    renamed, unmapped = {}, []
    for name, tensor in state.items():
        new_name = rename(name)
        if new_name is None:
            unmapped.append(name)
        else:
            renamed[new_name] = tensor
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


def read_d2_checkpoint(path: str | Path, allow_pickle: bool = False) -> StateDict:
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
    problems: list[str]
    notes: list[str]


def fpn_stages_of(cfg: CfgNode) -> tuple[int, ...]:
    """Stage numbers of ``MODEL.FPN.IN_FEATURES`` (``res2`` -> 2)."""
    return tuple(int(name[len("res") :]) for name in cfg.MODEL.FPN.IN_FEATURES)


def model_shapes(cfg: CfgNode) -> dict[str, torch.Size]:
    """Name -> shape of every state-dict entry of the model ``cfg`` describes (built without memory)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.PRETRAINED = ""
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _fill_running_stats(state: StateDict) -> list[str]:
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


def _pixel_problems(d2_state: StateDict, cfg: CfgNode) -> list[str]:
    problems = []
    for name, key in (("pixel_mean", "PIXEL_MEAN"), ("pixel_std", "PIXEL_STD")):
        if name in d2_state:
            stored = [round(float(v), 3) for v in d2_state[name].flatten()]
            configured = [round(float(v), 3) for v in cfg.MODEL[key]]
            if stored != configured:
                problems.append(f"{name} {stored} in the checkpoint, MODEL.{key} {configured} in the config")
    return problems


def convert_d2_state(d2_state: StateDict, cfg: CfgNode | None = None) -> Conversion:
    """Rename a detectron2 state dict and check it against the model ``cfg`` describes.

    Without ``cfg`` only the names are checked (every detectron2 name must map).

    Args:
        d2_state: from :func:`read_d2_checkpoint`.
        cfg: the model's config (:func:`~sltnet.d2_import.config.load_detectron2_config` or this project's).
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
    blocks: dict[int, set[int]] = {}  # stage -> indices of its blocks
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
