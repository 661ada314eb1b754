"""The device a command runs its model on."""

from __future__ import annotations

import torch


def pick_device(device: str) -> str:
    """``auto``: ``cuda`` when a GPU is available, else ``cpu``; any other name is returned as it is."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
