"""sam_engine: a data engine for SA-1B-style segmentation datasets."""

__version__ = "0.1.0"
