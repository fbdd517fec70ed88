"""Import models trained with detectron2 and the original SLTnet code: checkpoints
(:mod:`sltnet.d2_import.checkpoint`) and configs (:mod:`sltnet.d2_import.config`)."""
