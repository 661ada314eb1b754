"""Shared fixtures. Model helpers live in tests/model_helpers.py."""

import os

# Tests never reach a server: wandb stays offline, timm/huggingface never download.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
