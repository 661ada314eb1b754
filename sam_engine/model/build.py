"""Building SAM models, loading official checkpoints, and exporting ours in the official format.

An export directory holds ``sam.pth`` (a bare state dict, loadable by the official
``segment_anything`` code) and ``sam_config.json`` (the hyper-parameters its classes need to
rebuild the same model; see ``sam_engine.model.official``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sam_engine.model.config import SamConfig, load_variant, resolve_config, variant_names
from sam_engine.model.sam import Sam
from sam_engine.utils.atomic_files import file_sha256, write_atomic

log = logging.getLogger(__name__)

EXPORT_WEIGHTS = "sam.pth"
EXPORT_CONFIG = "sam_config.json"
EXPORT_CHECKSUM = "sam.pth.sha256"
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


def load_export(export_dir: str | Path, drop_path_rate: float = 0.0) -> Sam:
    """Rebuild the model saved by ``export_sam`` in ``export_dir``.

    Raises:
        FileNotFoundError: ``export_dir`` lacks ``sam.pth`` or ``sam_config.json``, naming them;
        CheckpointError: ``sam.pth`` does not match its ``sam.pth.sha256``.
    """
    export_dir = Path(export_dir)
    missing = [name for name in (EXPORT_WEIGHTS, EXPORT_CONFIG) if not (export_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{export_dir}: not an export directory (missing {', '.join(missing)}); "
            "pass a stage's export, e.g. outputs/engine/stage1/train/export"
        )
    check_export_checksum(export_dir)
    return build_sam(export_dir / EXPORT_CONFIG, checkpoint=export_dir / EXPORT_WEIGHTS, drop_path_rate=drop_path_rate)


def check_export_checksum(export_dir: Path) -> None:
    """Compare ``sam.pth`` with the SHA-256 its export wrote (exports made before it have none: not checked).

    Raises:
        CheckpointError: the weights changed since the export (a flipped bit loads otherwise), naming both files.
    """
    checksum = export_dir / EXPORT_CHECKSUM
    if not checksum.is_file():
        return
    expected = checksum.read_text(encoding="utf-8", errors="replace").split(maxsplit=1)[:1]
    if expected != [file_sha256(export_dir / EXPORT_WEIGHTS)]:
        raise CheckpointError(f"{export_dir / EXPORT_WEIGHTS}: its SHA-256 is not the one in {checksum}: the weights "
                              "changed or were damaged since the export")


def load_model(
    init: str | Path | None,
    variant: str | Mapping[str, Any] | SamConfig | None = None,
    drop_path_rate: float = 0.0,
) -> Sam:
    """The model a command starts from; every command loads its model through this.

    Arguments:
        init: an export directory (it carries its own architecture: ``variant`` is then ignored, with a
            warning when it names another), an official-format checkpoint of ``variant``
            (``sam_vit_b_01ec64.pth``), or None for fresh weights of ``variant``.
        variant: a variant name, a SamConfig or a mapping of its fields (a Hydra ``model`` node).
        drop_path_rate: stochastic depth in the image encoder (training only).
    Returns:
        The model in eval mode, on the CPU.
    Raises:
        FileNotFoundError: ``init`` does not exist, or is a directory that is not an export.
        ValueError: no ``variant`` for a checkpoint file or for fresh weights.
    """
    if init is not None and Path(init).is_dir():
        model = load_export(init, drop_path_rate=drop_path_rate)
        if variant is not None and model.config.name != resolve_config(variant).name:
            log.warning("%s holds a '%s' model; the variant '%s' is ignored", init, model.config.name,
                        resolve_config(variant).name)
        return model
    if init is not None and not Path(init).exists():
        raise FileNotFoundError(f"{init} not found (an export directory, holding {EXPORT_WEIGHTS} and "
                                f"{EXPORT_CONFIG}, or an official-format .pth checkpoint)")
    if variant is None:
        raise ValueError(f"{init or 'fresh weights'}: which model? Give its variant (model=vit_b ...), "
                         "or an export directory, which carries its own")
    return build_sam(variant, checkpoint=init, drop_path_rate=drop_path_rate)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a bare state dict (``.pth`` or ``.safetensors``) from ``path``, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
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


def _mismatches(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """Lines naming the missing keys, unexpected keys, shape mismatches, weights that are not floating point
    where the model's are (int64 weights would load as garbage) and weights holding NaN or infinity (at most
    5 of each). Floating weights of another precision (fp16, bf16) are fine: they load converted."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shared = [k for k in expected if k in state]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in shared if state[k].shape != expected[k].shape
    ]
    floating = [k for k in shared if expected[k].is_floating_point()]
    wrong_dtype = [f"{k}: {state[k].dtype}" for k in floating if not state[k].is_floating_point()]
    non_finite = [k for k in floating if state[k].is_floating_point() and not torch.isfinite(state[k]).all()]
    lines = []
    for title, items in (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", wrong_shape),
                         ("not floating point", wrong_dtype),
                         ("NaN or infinite values", non_finite)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
            lines.append(f"{title}: {shown}")
    return lines


def load_checkpoint(model: Sam, path: str | Path) -> None:
    """Load ``path`` into ``model`` strictly, explaining any mismatch (keys, shapes, variant)."""
    state = read_state_dict(path)
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise CheckpointError("\n".join([f"{path} does not fit model '{model.config.name}'.", _guess_variant(state),
                                          *problems]))
    model.load_state_dict(state, strict=True)


def load_timm_encoder(model: Sam, path: str | Path) -> None:
    """Load image-encoder weights in timm's format into ``model.image_encoder`` (strictly).

    Takes timm's ``samvit_*`` weights (``model.safetensors`` of ``samvit_base_patch16.sa1b`` and the
    like) or an official SAM checkpoint, whose ``image_encoder.*`` keys are used (timm's own filter
    maps them). Position embeddings and relative positions of another grid size are resampled, so
    1024-px weights start a model of another input size.
    """
    from timm.layers import resample_abs_pos_embed_nhwc
    from timm.models.vision_transformer_sam import checkpoint_filter_fn

    state = checkpoint_filter_fn(read_state_dict(path), None)
    encoder = model.image_encoder
    expected = encoder.state_dict()
    state = {k.replace("mlp.fc", "mlp.lin"): v for k, v in state.items() if not k.startswith("head.")}
    for key, value in state.items():
        target = expected.get(key)
        if target is None or value.shape == target.shape:
            continue
        if key == "pos_embed":
            state[key] = resample_abs_pos_embed_nhwc(value, new_size=target.shape[1:3])
        elif "rel_pos" in key and value.shape[1] == target.shape[1]:
            state[key] = F.interpolate(value.T[None], size=target.shape[0], mode="linear")[0].T
    problems = _mismatches(expected, state)
    if problems:
        raise CheckpointError("\n".join([f"{path}: encoder weights do not fit model '{model.config.name}'.",
                                          *problems]))
    encoder.load_state_dict(state, strict=True)


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


def export_sam(model: Sam, out_dir: str | Path) -> Path:
    """Write ``out_dir/sam.pth`` (bare float32 state dict), its SHA-256 (``sam.pth.sha256``) and
    ``out_dir/sam_config.json``.

    Both files are written atomically: a crash never leaves a half-written export.
    Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    write_atomic(out_dir / EXPORT_WEIGHTS, lambda f: torch.save(state, f), binary=True)
    checksum = f"{file_sha256(out_dir / EXPORT_WEIGHTS)}  {EXPORT_WEIGHTS}\n"  # sha256sum's format: sha256sum -c
    write_atomic(out_dir / EXPORT_CHECKSUM, lambda f: f.write(checksum))
    config_text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    write_atomic(out_dir / EXPORT_CONFIG, lambda f: f.write(config_text))
    return out_dir
