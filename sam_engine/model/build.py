"""Building SAM models, loading official checkpoints, and exporting ours in the official format.

An export directory holds ``sam.pth`` (a bare state dict, loadable by the official
``segment_anything`` code) and ``sam_config.json`` (the hyper-parameters its classes need to
rebuild the same model; see ``sam_engine.model.official``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sam_engine.model.config import SamConfig, load_variant, resolve_config, variant_names
from sam_engine.model.sam import Sam

EXPORT_WEIGHTS = "sam.pth"
EXPORT_CONFIG = "sam_config.json"
_ENCODER_PATCH_KEY = "image_encoder.patch_embed.proj.weight"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it is loaded into."""


def build_sam(
    variant_or_config: str | Path | Mapping[str, Any] | SamConfig,
    checkpoint: str | Path | None = None,
    drop_path_rate: float = 0.0,
) -> Sam:
    """Build a SAM model, optionally loading an official-format checkpoint (strictly).

    Arguments:
        variant_or_config: a variant name (``tiny``, ``vit_b``, ``vit_l``, ``vit_h``), a SamConfig,
            a mapping of its fields, or a ``sam_config.json`` path (or the export directory holding it).
        checkpoint: a bare state dict file as released by Meta (``sam_vit_b_01ec64.pth``) or written
            by ``export_sam``. Every key must be present with its shape; none may be extra.
        drop_path_rate: stochastic depth in the image encoder (training only).
    Returns:
        The model in eval mode, on the CPU.
    """
    config = resolve_config(variant_or_config)
    model = Sam(config, drop_path_rate=drop_path_rate)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def load_export(export_dir: str | Path) -> Sam:
    """Rebuild the model saved by ``export_sam`` in ``export_dir``."""
    export_dir = Path(export_dir)
    for name in (EXPORT_CONFIG, EXPORT_WEIGHTS):
        if not (export_dir / name).is_file():
            raise FileNotFoundError(f"{export_dir / name} not found: is {export_dir} an export directory?")
    return build_sam(export_dir / EXPORT_CONFIG, checkpoint=export_dir / EXPORT_WEIGHTS)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a bare state dict from ``path``, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(state)[:5] if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(
            f"{path}: expected a bare state dict of tensors (as sam.pth), found {keys}; "
            "a Lightning checkpoint must be exported first"
        )
    return dict(state)


def load_checkpoint(model: Sam, path: str | Path) -> None:
    """Load ``path`` into ``model`` strictly, explaining any mismatch (keys, shapes, variant)."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or extra or wrong_shape:
        lines = [f"{path} does not fit model '{model.config.name}'."]
        guess = _guess_variant(state)
        if guess:
            lines.append(guess)
        for title, items in (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", wrong_shape)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
                lines.append(f"{title}: {shown}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def _guess_variant(state: Mapping[str, torch.Tensor]) -> str:
    """Describe the image encoder a state dict holds, naming the shipped variant it matches if any."""
    if _ENCODER_PATCH_KEY not in state:
        return "The checkpoint has no SAM image encoder (no key image_encoder.patch_embed.proj.weight)."
    embed_dim = state[_ENCODER_PATCH_KEY].shape[0]
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    variants = {name: load_variant(name) for name in variant_names()}
    matches = [name for name, c in variants.items() if (c.embed_dim, c.depth) == (embed_dim, depth)]
    found = f"embed_dim {embed_dim}, depth {depth}" + (f" (variant {matches[0]})" if matches else "")
    return f"Its image encoder has {found}."


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory and rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_sam(model: Sam, out_dir: str | Path) -> Path:
    """Write ``out_dir/sam.pth`` (bare float32 state dict) and ``out_dir/sam_config.json``.

    Both files are written atomically: a crash never leaves a half-written export.
    Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out_dir / EXPORT_WEIGHTS, lambda p: torch.save(state, p))
    config_text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    _atomic_write(out_dir / EXPORT_CONFIG, lambda p: p.write_text(config_text))
    return out_dir
