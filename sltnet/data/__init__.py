"""Datasets (ST-COCO), sampling, image preprocessing and the synthetic video benchmark."""
