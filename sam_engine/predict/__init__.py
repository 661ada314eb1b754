"""Prompted segmentation of one image (``python -m sam_engine.predict``, ``sam-predict``).

- ``predictor``: :class:`SamPredictor`, the official ``SamPredictor`` interface over our model: an
  image embedded once, then masks from points, boxes and mask prompts, batched.
"""
