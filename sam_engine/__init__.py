"""sam_engine: a data engine for SA-1B-style segmentation datasets."""

from omegaconf import OmegaConf

from sam_engine.utils.paths import folder_name

__version__ = "0.1.0"

OmegaConf.register_new_resolver("folder_name", folder_name, replace=True)  # conf/logger/wandb.yaml's group
