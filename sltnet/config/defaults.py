"""Default configuration. Key names follow detectron2 (and the original SLTnet) so existing YAML
files and command-line habits carry over; every value can be overridden by a YAML file or by
``KEY VALUE`` pairs on the command line."""

from yacs.config import CfgNode as CN

_C = CN()
_C.VERSION = 2

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # or "SLTnet"
_C.MODEL.DEVICE = "cpu"
_C.MODEL.WEIGHTS = ""
# Pixel statistics in the channel order of INPUT.FORMAT (detectron2's MSRA ResNet defaults).
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]

_C.MODEL.BACKBONE = CN()
# The *.NAME keys are kept so detectron2 configs load; the architecture is MODEL.META_ARCHITECTURE.
_C.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
# Stages frozen from the bottom: 0 none, 1 stem, 2 stem + res2, ...
_C.MODEL.BACKBONE.FREEZE_AT = 2
# Optional local file with ImageNet weights for the bottom-up network (never downloaded).
_C.MODEL.BACKBONE.PRETRAINED = ""

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50  # 18, 34, 50, 101
_C.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.RESNETS.NUM_GROUPS = 1  # 32 for ResNeXt-101 32x8d
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64  # 8 for ResNeXt-101 32x8d
_C.MODEL.RESNETS.NORM = "FrozenBN"
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64

_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.FPN.OUT_CHANNELS = 256

_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]

_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
# Proposals with a side of at most this many pixels are dropped.
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

_C.MODEL.RPN = CN()
_C.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7

_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
_C.MODEL.ROI_HEADS.NUM_CLASSES = 30
_C.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True

_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 2
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
# 0 = adaptive (detectron2's default); deployable configs use a fixed ratio (e.g. 2) so every
# backend, TensorRT included, computes the same RoIAlign.
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False

# SLTnet: short-term anchor linking, long-term self-guided attention, double head.
_C.MODEL.SPATIOTEMPORAL = CN()
# Sequential: window of NUM_FRAMES frames ending at the reference frame. Symmetric
# (FORWARD_AGGREGATION): 2 * NUM_FRAMES + 1 frames centred on it.
_C.MODEL.SPATIOTEMPORAL.NUM_FRAMES = 3
_C.MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION = False
_C.MODEL.SPATIOTEMPORAL.TEMPORAL_DROPOUT = False
# With TEMPORAL_DROPOUT, drop the support groups' frames the same way (the original's); False keeps
# their whole window, as the keyframe memory entries of test time have.
_C.MODEL.SPATIOTEMPORAL.SUPPORT_TEMPORAL_DROPOUT = True
_C.MODEL.SPATIOTEMPORAL.FREEZE_BACKBONE = True
_C.MODEL.SPATIOTEMPORAL.FREEZE_PROPOSAL_GENERATOR = True
_C.MODEL.SPATIOTEMPORAL.FREEZE_SPATIAL_HEAD = True
_C.MODEL.SPATIOTEMPORAL.LONG_TERM = True
_C.MODEL.SPATIOTEMPORAL.NUM_KEYFRAMES = 3
_C.MODEL.SPATIOTEMPORAL.KEYFRAME_INTERVAL = 10
# "max" or "adaptive" aggregation of tubelet RoI features over the window.
_C.MODEL.SPATIOTEMPORAL.AGGREGATION = "max"
# Use the spatio-temporal double head (False: ST head alone scores the boxes).
_C.MODEL.SPATIOTEMPORAL.DOUBLE_HEAD = True
# Support groups per training sample that feed the long-term references.
_C.MODEL.SPATIOTEMPORAL.TRAIN_SUPPORT_GROUPS = 2
# Long-term references in training: "support" (the support groups only, the original's) or
# "support_and_current" (also the sample's own first P RoIs, as the test-time references are).
_C.MODEL.SPATIOTEMPORAL.TRAIN_REFERENCES = "support"
# Stage 2 with FREEZE_SPATIAL_HEAD false: also train the spatial head's classifier (cross-entropy on
# its logits). The original trains the spatial head with box regression only.
_C.MODEL.SPATIOTEMPORAL.SPATIAL_CLS_LOSS = False

_C.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD = CN()
_C.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.REF_POST_NMS_TOP_N = 75
_C.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION = CN()
_C.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.EMBED_DIM = 64
_C.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.GROUP = 16
_C.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.STAGE = 2
_C.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.LOCATION_FREE = False

# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.FORMAT = "BGR"  # channel order the network sees: "BGR" or "RGB"
_C.INPUT.MIN_SIZE_TRAIN = (600,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1000
_C.INPUT.MIN_SIZE_TEST = 600
_C.INPUT.MAX_SIZE_TEST = 1000
_C.INPUT.RANDOM_FLIP = "horizontal"  # or "none"

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ("vid_train_split0",)
_C.DATASETS.TEST = ("vid_val",)
# Extra catalog file (YAML/JSON: name -> {image_root, json}) merged over the built-in names.
_C.DATASETS.CATALOG = ""

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 2
_C.DATALOADER.SIZE_DIVISIBILITY = 32
# Training groups per video (docs/method.md#frame-groups): a video keeps all its groups unless it
# has more than TRAIN_GROUPS_PER_VIDEO x window size of them, else this many, evenly spread.
_C.DATALOADER.TRAIN_GROUPS_PER_VIDEO = 10
# Long-term support groups: drawn "once" for each group when training starts (the original's), or
# afresh every epoch ("per_epoch").
_C.DATALOADER.SUPPORT_DRAW = "once"

# ---------------------------------------------------------------------------------------------
# Solver (detectron2 names)
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.IMS_PER_BATCH = 16
_C.SOLVER.BASE_LR = 0.02
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (60000, 80000)
_C.SOLVER.MAX_ITER = 90000
_C.SOLVER.WARMUP_FACTOR = 0.001
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 5000
_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False

_C.TEST = CN()
_C.TEST.DETECTIONS_PER_IMAGE = 100

_C.OUTPUT_DIR = "./output"
_C.SEED = 0
