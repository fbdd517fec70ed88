"""Reading, checking and writing configs.

A config file is YAML whose keys mirror the default tree (``sltnet/config/defaults.py``). A file
may name a ``_BASE_`` file (relative to itself) whose values it overrides; bases chain. After the
files, ``KEY VALUE`` pairs from the command line are applied. Every value is checked against the
type of its default, and every key must exist in the defaults, except that a lenient load
(``allow_unknown``) skips keys of files that the defaults lack and names them all in one
:class:`ConfigWarning`; unknown keys on the command line are always errors.
"""

import ast
import difflib
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode

from sltnet.atomic_io import atomic_write_text
from sltnet.config.defaults import _C
from sltnet.errors import SltnetError

BASE_KEY = "_BASE_"
COMMAND_LINE = "on the command line"

# Close-match threshold for "did you mean": full key paths share long prefixes, so a loose
# threshold would suggest an unrelated key of the same section.
_SUGGESTION_CUTOFF = 0.8


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the default config."""
    return _C.clone()


class ConfigWarning(UserWarning):
    """A config file had keys that were skipped (lenient loading)."""


#: ``(path, values)`` of a config file and its bases, the furthest base first.
ConfigChain = list[tuple[str, dict[str, Any]]]


def load_config(config_file: str | None, overrides: Sequence[str] = (), allow_unknown: bool = False) -> CfgNode:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then ``KEY VALUE`` overrides.

    Args:
        config_file: YAML file, or None (or "") for the defaults alone.
        overrides: flat ``[KEY, VALUE, KEY, VALUE, ...]`` tokens, values written as YAML
            (``true``, ``3``, ``0.5``, ``[1, 2]``; a Python tuple such as ``(600,)`` also works).
        allow_unknown: skip keys of the files that the defaults lack and name them in one
            :class:`ConfigWarning` instead of failing.
    Returns:
        The merged, validated and frozen config.
    Raises:
        SltnetError: one line naming the file or key and the problem.
    """
    chain = read_config_chain(config_file) if config_file else []
    return config_from_chain(chain, overrides, origin=config_file, allow_unknown=allow_unknown)


def read_config_chain(config_file: str) -> ConfigChain:
    """The values of ``config_file`` and of its ``_BASE_`` chain, the furthest base first."""
    return _read_base_chain(config_file, ())


def config_from_chain(
    chain: ConfigChain,
    overrides: Sequence[str] = (),
    *,
    origin: str | None = None,
    base: CfgNode | None = None,
    allow_unknown: bool = False,
) -> CfgNode:
    """Merge already-read config files over ``base`` (default: the defaults), then the overrides.

    Args:
        chain: ``(path, values)`` pairs, applied in order.
        overrides: as for :func:`load_config`.
        origin: the file the user named, for messages.
        base: the values the files start from (a mutable config; it is not changed).
        allow_unknown: as for :func:`load_config`.
    Returns:
        The merged, validated and frozen config.
    """
    cfg = get_cfg() if base is None else base.clone()
    skipped: list[str] | None = [] if allow_unknown else None
    for path, values in chain:
        _merge_mapping(cfg, values, "", f"in {path}", skipped)
    if skipped:
        warnings.warn(
            f"{origin}: ignored {len(skipped)} config key{'s' if len(skipped) > 1 else ''} this implementation "
            f"does not have: {', '.join(skipped)}",
            ConfigWarning,
            stacklevel=2,
        )
    _apply_overrides(cfg, overrides)
    try:
        validate_config(cfg)
    except SltnetError as err:
        where = " + ".join(([origin] if origin else []) + (["command line"] if overrides else []))
        raise SltnetError(f"{where or 'defaults'}: {err}") from None
    cfg.freeze()
    return cfg


def save_config(cfg: CfgNode, path: str) -> None:
    """Write ``cfg`` as a self-contained YAML file that :func:`load_config` reads back unchanged.

    The file appears complete or not at all (temporary file in the same folder, then rename).
    """
    atomic_write_text(path, cfg.dump(sort_keys=False, default_flow_style=False))


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _read_base_chain(path: str, including: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """``(path, values)`` of ``path`` and its bases, the furthest base first.

    ``including`` holds the real paths of the files that (transitively) include ``path``.
    """
    real_path = os.path.realpath(path)
    if real_path in including:
        chain = " -> ".join(os.path.relpath(p) for p in including + (real_path,))
        raise SltnetError(f"{path}: {BASE_KEY} cycle: {chain}")
    values = _read_yaml(path)
    base = values.pop(BASE_KEY, None)
    if base is None:
        return [(path, values)]
    if not isinstance(base, str) or not base:
        raise SltnetError(f"{path}: {BASE_KEY} must be a file path, got {_describe(base)}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(base)))
    if not os.path.isfile(base_path):
        raise SltnetError(f"{base_path}: no such config file ({BASE_KEY} of {path})")
    return _read_base_chain(base_path, including + (real_path,)) + [(path, values)]


def _read_yaml(path: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty for an empty file)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_YamlLoader)
    except FileNotFoundError:
        raise SltnetError(f"{path}: no such config file") from None
    except OSError as err:
        raise SltnetError(f"{path}: cannot read config file: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SltnetError(f"{path}: config file is not UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SltnetError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SltnetError(f"{path}: expected a mapping of config keys at the top level, got {_describe(data)}")
    return data


# ---------------------------------------------------------------------------------------------
# Merging with type checks
# ---------------------------------------------------------------------------------------------


def _merge_mapping(
    node: CfgNode, values: dict[Any, Any], prefix: str, where: str, skipped: list[str] | None = None
) -> None:
    """Set every key of ``values`` on ``node``; ``prefix`` is the node's dotted path.

    Keys ``node`` lacks are errors, or, when ``skipped`` is a list, appended to it (every leaf of an
    unknown section) and left out.
    """
    for key, value in values.items():
        full_key = f"{prefix}{key}"
        if not isinstance(key, str) or key not in node:
            if skipped is None:
                raise _unknown_key(str(full_key), where)
            skipped.extend(path for path, _ in flatten_values({key: value}, prefix))
        elif isinstance(node[key], CfgNode):
            if not isinstance(value, dict):
                raise SltnetError(f"{full_key} {where}: expected a section of keys, got {_describe(value)}")
            _merge_mapping(node[key], value, f"{full_key}.", where, skipped)
        else:
            node[key] = _coerce(value, node[key], full_key, where)


def flatten_values(values: dict[Any, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a nested mapping (an empty mapping is a leaf)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten_values(value, f"{path}.")
        else:
            yield path, value


def _apply_overrides(cfg: CfgNode, tokens: Sequence[str]) -> None:
    """Apply ``KEY VALUE`` pairs given as a flat token list."""
    if len(tokens) % 2:
        raise SltnetError(f"config overrides must be KEY VALUE pairs, but {tokens[-1]} has no value")
    for full_key, text in zip(tokens[0::2], tokens[1::2]):
        *parents, leaf = full_key.split(".")
        node = cfg
        for name in parents:
            node = node.get(name)
            if not isinstance(node, CfgNode):
                raise _unknown_key(full_key, COMMAND_LINE)
        if leaf not in node:
            raise _unknown_key(full_key, COMMAND_LINE)
        if isinstance(node[leaf], CfgNode):
            example = next(iter(node[leaf]))
            raise SltnetError(
                f"{full_key} {COMMAND_LINE}: is a section; set one of its keys, e.g. {full_key}.{example}"
            )
        node[leaf] = _coerce(_parse_override(text, node[leaf]), node[leaf], full_key, COMMAND_LINE)


def _parse_override(text: str, default: Any) -> Any:
    """A command-line value: YAML, or a Python literal such as ``(600,)``; text for text keys."""
    if isinstance(default, str):
        return text
    try:
        value = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError:
        value = text
    if isinstance(value, str):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            pass
    return value


def _coerce(value: Any, default: Any, key: str, where: str) -> Any:
    """``value`` converted to the type of ``default``, or SltnetError.

    An int is accepted for a float; a list for a tuple and the reverse. Sequence elements are
    checked against the first element of the default (all defaults are homogeneous).
    """
    if isinstance(default, bool) or isinstance(default, str):
        ok = type(value) is type(default)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise SltnetError(f"{key} {where}: expected list, got {_describe(value)}")
        items = [_coerce(v, default[0], f"{key}[{i}]", where) for i, v in enumerate(value)] if default else list(value)
        return type(default)(items)
    else:
        raise TypeError(f"default of {key} has unsupported type {type(default).__name__}")
    if not ok:
        raise SltnetError(f"{key} {where}: expected {type(default).__name__}, got {_describe(value)}")
    return value


def _unknown_key(full_key: str, where: str) -> SltnetError:
    """The error for a key the defaults lack, with the closest valid key when one is close."""
    matches = difflib.get_close_matches(full_key, list(_all_key_paths(_C, "")), n=1, cutoff=_SUGGESTION_CUTOFF)
    hint = f" (did you mean {matches[0]}?)" if matches else ""
    return SltnetError(f"unknown config key {full_key} {where}{hint}")


def _all_key_paths(node: CfgNode, prefix: str) -> Iterator[str]:
    """Dotted paths of every section and value below ``node``."""
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, CfgNode):
            yield from _all_key_paths(value, f"{prefix}{key}.")


def _describe(value: Any) -> str:
    """``type 'value'`` for messages, shortened to keep them on one line."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


# ---------------------------------------------------------------------------------------------
# Cross-key checks
# ---------------------------------------------------------------------------------------------

_CHOICES = {
    "MODEL.META_ARCHITECTURE": ("GeneralizedRCNN", "SLTnet"),
    "MODEL.SPATIOTEMPORAL.AGGREGATION": ("max", "adaptive"),
    "MODEL.SPATIOTEMPORAL.TRAIN_REFERENCES": ("support", "support_and_current"),
    "DATALOADER.SUPPORT_DRAW": ("once", "per_epoch"),
    "INPUT.FORMAT": ("BGR", "RGB"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": ("choice", "range"),
    "INPUT.RANDOM_FLIP": ("horizontal", "none"),
    "MODEL.RESNETS.DEPTH": (18, 34, 50, 101),
    "SOLVER.WARMUP_METHOD": ("linear", "constant"),
}

_POSITIVE = (
    "MODEL.FPN.OUT_CHANNELS",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
    "MODEL.SPATIOTEMPORAL.NUM_FRAMES",
    "MODEL.SPATIOTEMPORAL.KEYFRAME_INTERVAL",
    "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.REF_POST_NMS_TOP_N",
    "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.EMBED_DIM",
    "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.GROUP",
    "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.STAGE",
    "INPUT.MAX_SIZE_TRAIN",
    "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.MAX_ITER",
    "TEST.DETECTIONS_PER_IMAGE",
)

_NON_NEGATIVE = (
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO",
    "MODEL.SPATIOTEMPORAL.NUM_KEYFRAMES",
    "MODEL.SPATIOTEMPORAL.TRAIN_SUPPORT_GROUPS",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.WARMUP_ITERS",
)

# Bottom-up stages a backbone has (stem, res2..res5), the most FREEZE_AT can freeze.
_NUM_BACKBONE_STAGES = 5


def validate_config(cfg: CfgNode) -> None:
    """Check rules that involve more than one key, or a value's range. Raises SltnetError."""
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise SltnetError(f"{key} must be one of {', '.join(map(str, choices))}, got {_get(cfg, key)!r}")
    for key in _POSITIVE:
        if _get(cfg, key) <= 0:
            raise SltnetError(f"{key} must be positive, got {_get(cfg, key)}")
    for key in _NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise SltnetError(f"{key} must be non-negative, got {_get(cfg, key)}")
    _validate_input(cfg)
    _validate_backbone(cfg)
    _validate_heads(cfg)
    _validate_spatiotemporal(cfg)
    steps = list(cfg.SOLVER.STEPS)
    if steps != sorted(set(steps)):
        raise SltnetError(f"SOLVER.STEPS must be strictly increasing, got {steps}")


def _validate_input(cfg: CfgNode) -> None:
    for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"):
        if len(_get(cfg, key)) != 3:
            raise SltnetError(f"{key} must have 3 values (one per channel), got {list(_get(cfg, key))}")
    if min(cfg.MODEL.PIXEL_STD) <= 0:
        raise SltnetError(f"MODEL.PIXEL_STD must be positive, got {list(cfg.MODEL.PIXEL_STD)}")
    sizes = list(cfg.INPUT.MIN_SIZE_TRAIN)
    if not sizes or min(sizes) <= 0:
        raise SltnetError(f"INPUT.MIN_SIZE_TRAIN must hold positive sizes, got {sizes}")
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(sizes) != 2:
        raise SltnetError(f"INPUT.MIN_SIZE_TRAIN must be [low, high] with sampling 'range', got {sizes}")


def _validate_backbone(cfg: CfgNode) -> None:
    resnets = cfg.MODEL.RESNETS
    # ResNet-18/34 use basic blocks: res2 keeps the stem's width and there is no grouped conv.
    if resnets.DEPTH in (18, 34):
        if resnets.RES2_OUT_CHANNELS != resnets.STEM_OUT_CHANNELS:
            raise SltnetError(
                f"MODEL.RESNETS.RES2_OUT_CHANNELS must equal MODEL.RESNETS.STEM_OUT_CHANNELS "
                f"({resnets.STEM_OUT_CHANNELS}) for MODEL.RESNETS.DEPTH {resnets.DEPTH}, "
                f"got {resnets.RES2_OUT_CHANNELS}"
            )
        if resnets.NUM_GROUPS != 1:
            raise SltnetError(f"MODEL.RESNETS.NUM_GROUPS must be 1 for MODEL.RESNETS.DEPTH {resnets.DEPTH}")
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    if not 0 <= freeze_at <= _NUM_BACKBONE_STAGES:
        raise SltnetError(f"MODEL.BACKBONE.FREEZE_AT must be in 0..{_NUM_BACKBONE_STAGES}, got {freeze_at}")
    missing = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in resnets.OUT_FEATURES]
    if missing:
        raise SltnetError(f"MODEL.FPN.IN_FEATURES {missing} are not in MODEL.RESNETS.OUT_FEATURES")


def _validate_heads(cfg: CfgNode) -> None:
    num_levels = len(cfg.MODEL.RPN.IN_FEATURES)
    for key in ("MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"):
        if len(_get(cfg, key)) not in (1, num_levels):
            raise SltnetError(
                f"{key} needs 1 or {num_levels} entries (one per MODEL.RPN.IN_FEATURES level), "
                f"got {len(_get(cfg, key))}"
            )


def _validate_spatiotemporal(cfg: CfgNode) -> None:
    st = cfg.MODEL.SPATIOTEMPORAL
    attention = st.ROI_BOX_HEAD.ATTENTION
    if st.TEMPORAL_DROPOUT and not st.FORWARD_AGGREGATION:
        raise SltnetError(
            "MODEL.SPATIOTEMPORAL.TEMPORAL_DROPOUT requires MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION "
            "(it samples past and future frames)"
        )
    if cfg.MODEL.META_ARCHITECTURE != "SLTnet":
        return
    if cfg.MODEL.ROI_BOX_HEAD.FC_DIM % attention.GROUP:
        raise SltnetError(
            f"MODEL.ROI_BOX_HEAD.FC_DIM ({cfg.MODEL.ROI_BOX_HEAD.FC_DIM}) must be divisible by "
            f"MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.GROUP ({attention.GROUP})"
        )
    # 4 geometry values, each encoded by sines and cosines of the same frequencies.
    if attention.EMBED_DIM % 8:
        raise SltnetError(
            f"MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.EMBED_DIM must be a multiple of 8, got {attention.EMBED_DIM}"
        )
    if st.ROI_BOX_HEAD.REF_POST_NMS_TOP_N > cfg.MODEL.RPN.POST_NMS_TOPK_TEST:
        raise SltnetError(
            f"MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.REF_POST_NMS_TOP_N ({st.ROI_BOX_HEAD.REF_POST_NMS_TOP_N}) "
            f"must not exceed MODEL.RPN.POST_NMS_TOPK_TEST ({cfg.MODEL.RPN.POST_NMS_TOPK_TEST})"
        )


def _get(cfg: CfgNode, full_key: str) -> Any:
    """The value at a dotted key path."""
    node = cfg
    for name in full_key.split("."):
        node = node[name]
    return node
