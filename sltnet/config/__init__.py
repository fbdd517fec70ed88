"""Configuration: detectron2-style YAML files with ``_BASE_`` inheritance and ``KEY VALUE``
command-line overrides, checked against the defaults in :mod:`sltnet.config.defaults`."""

from yacs.config import CfgNode

from sltnet.config.loader import get_cfg, load_config, save_config, validate_config

__all__ = ["CfgNode", "get_cfg", "load_config", "save_config", "validate_config"]
