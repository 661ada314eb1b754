"""Metrics of masks: tensor (or RLE) in, numbers out.

- ``interactive``: mIoU after k clicks, NoC@90, multimask choices, IoU-head error.
- ``proposals``: automatic masks against ground truth (precision at IoU 0.5/0.75/0.9, recall),
  streamed in constant memory and mergeable across array tasks.
"""
