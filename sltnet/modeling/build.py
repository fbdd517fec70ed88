"""Build the detector a config describes and load its weights."""

from pathlib import Path

import torch
from torch import nn
from yacs.config import CfgNode

from sltnet.contract import Window
from sltnet.engine.checkpoint import load_checkpoint
from sltnet.errors import SltnetError
from sltnet.modeling.aggregation import TubeletAggregation
from sltnet.modeling.baseline import FasterRCNN, build_faster_rcnn
from sltnet.modeling.sltnet import SLTnet
from sltnet.modeling.st_head import STClassifier, build_st_box_head

# Parameters of an SLTnet that a stage-1 (single-frame) checkpoint does not have.
_TEMPORAL_PREFIXES = ("st_box_head.", "st_cls_predictor.")


def build_sltnet(cfg: CfgNode) -> SLTnet:
    """SLTnet from the config, with the parts frozen that ``MODEL.SPATIOTEMPORAL.FREEZE_*`` name
    (``requires_grad`` False); an unfrozen part trains with its own losses in stage 2
    (:meth:`SLTnet.training_losses`)."""
    detector = build_faster_rcnn(cfg)
    st = cfg.MODEL.SPATIOTEMPORAL
    model = SLTnet(
        backbone=detector.backbone,
        rpn=detector.rpn,
        roi_heads=detector.roi_heads,
        rpn_in_features=detector.rpn_in_features,
        roi_in_features=detector.roi_in_features,
        st_box_head=build_st_box_head(cfg),
        st_cls_predictor=STClassifier(cfg.MODEL.ROI_BOX_HEAD.FC_DIM, cfg.MODEL.ROI_HEADS.NUM_CLASSES),
        aggregation=TubeletAggregation(st.AGGREGATION),
        window=Window.of_config(st),
        double_head=st.DOUBLE_HEAD,
        num_ref_rois=st.ROI_BOX_HEAD.REF_POST_NMS_TOP_N,
        train_current_references=st.TRAIN_REFERENCES == "support_and_current",
        spatial_cls_loss=st.SPATIAL_CLS_LOSS,
    )
    frozen = [
        (st.FREEZE_BACKBONE, model.backbone),
        (st.FREEZE_PROPOSAL_GENERATOR, model.rpn),
        (st.FREEZE_SPATIAL_HEAD, model.roi_heads),
    ]
    for freeze, module in frozen:
        if freeze:
            module.requires_grad_(False)
    return model


def build_model(cfg: CfgNode) -> FasterRCNN | SLTnet:
    """The single-frame baseline ("GeneralizedRCNN") or SLTnet ("SLTnet"), on ``MODEL.DEVICE``,
    with ``MODEL.WEIGHTS`` loaded when set."""
    architecture = cfg.MODEL.META_ARCHITECTURE
    if architecture == "GeneralizedRCNN":
        model = build_faster_rcnn(cfg)
    elif architecture == "SLTnet":
        model = build_sltnet(cfg)
    else:
        raise SltnetError(f"MODEL.META_ARCHITECTURE: expected 'GeneralizedRCNN' or 'SLTnet', got {architecture!r}")
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)
    return model.to(torch.device(cfg.MODEL.DEVICE))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``model_final.pt`` (weights) or of a training checkpoint (its ``model`` entry).

    Raises:
        SltnetError: an unreadable file, or one that holds no state dict of tensors.
    """
    state = load_checkpoint(Path(path))
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SltnetError(f"{path}: not a state dict of tensors")
    return state


def has_temporal_weights(path: str | Path) -> bool:
    """Whether a weights file holds SLTnet's spatio-temporal head (stage-2 weights, not stage-1)."""
    return any(key.startswith(_TEMPORAL_PREFIXES) for key in read_weights(path))


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a ``model_final.pt`` (weights) or a training checkpoint (its ``model`` entry).

    An SLTnet may load a single-frame checkpoint: its ST head then keeps its initialisation.

    Raises:
        SltnetError: unreadable file, or keys/shapes that do not fit the model (all listed).
    """
    path = Path(path)
    state = read_weights(path)
    own = model.state_dict()
    problems = [f"unexpected {key}" for key in state if key not in own]
    problems += [f"missing {key}" for key in own if key not in state and not key.startswith(_TEMPORAL_PREFIXES)]
    problems += [
        f"{key} has shape {tuple(state[key].shape)}, model has {tuple(own[key].shape)}"
        for key in state
        if key in own and state[key].shape != own[key].shape
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise SltnetError(f"{path}: weights do not fit {type(model).__name__}: {shown}")
    model.load_state_dict(state, strict=False)
