"""SamConfig: every hyper-parameter that fixes the shape of a SAM model, and the named variants.

The variants (`tiny`, `vit_b`, `vit_l`, `vit_h`) live as data in ``sam_engine/conf/model/<name>.yaml``; the
same files are the Hydra ``model`` config group. Fields not given in a file keep SAM's defaults.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sam_engine.transforms import PIXEL_MEAN, PIXEL_STD
from sam_engine.utils.config_checks import is_int, is_number
from sam_engine.utils.json_input import parse_json

VARIANTS = resources.files("sam_engine.conf") / "model"
"""The variant files, package data (a wheel install reads them from the installed package)."""


@dataclass(frozen=True)
class SamConfig:
    """Architecture of a SAM model. Defaults are those of the official release (ViT-B encoder).

    The image encoder sees ``img_size`` x ``img_size`` inputs cut into ``patch_size`` patches, so the
    image embedding is (img_size / patch_size)^2 and the low-res masks are 4x that side.
    """

    name: str = "custom"
    # Image encoder (a ViT with windowed attention, relative positions and a neck to prompt_embed_dim).
    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    # Prompt encoder and mask decoder.
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # Input normalisation and output threshold.
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        type_problems = self._type_problems()
        if type_problems:  # before any arithmetic on them ("256" % 16, a division by num_heads 0)
            raise ValueError(f"model config '{self.name}': " + "; ".join(type_problems))
        # Lists from YAML/JSON become tuples so that configs compare and hash as values.
        for name in ("global_attn_indexes", "pixel_mean", "pixel_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            problems.append(f"global_attn_indexes {self.global_attn_indexes} outside 0..{self.depth - 1}")
        if (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            problems.append(
                f"prompt_embed_dim/2 = {self.prompt_embed_dim // 2} is not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        if problems:
            raise ValueError(f"model config '{self.name}': " + "; ".join(problems))

    def _type_problems(self) -> list[str]:
        """Each field of a wrong type or out of range, named: sizes and counts are positive integers (the
        mask threshold any finite number), ``global_attn_indexes`` a list of integers, ``pixel_mean`` and
        ``pixel_std`` three finite numbers (the std positive)."""
        def is_list(value) -> bool:  # a list, tuple or OmegaConf ListConfig (a command's model node)
            return isinstance(value, Sequence) and not isinstance(value, str)

        problems = []
        if not isinstance(self.name, str):
            problems.append(f"name {self.name!r} is not a string")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and not (is_int(value) and value > 0):
                problems.append(f"{field.name} {value!r} is not a positive integer")
            elif field.type == "float" and field.name != "mask_threshold" and not (is_number(value) and value > 0):
                problems.append(f"{field.name} {value!r} is not a positive number")
            elif field.name == "mask_threshold" and not is_number(value):
                problems.append(f"mask_threshold {value!r} is not a finite number")
        indexes = self.global_attn_indexes
        if not is_list(indexes) or not all(is_int(i) for i in indexes):
            problems.append(f"global_attn_indexes {indexes!r} is not a list of integers")
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            ok = is_list(value) and len(value) == 3 and all(is_number(v) for v in value)
            if not ok or (name == "pixel_std" and min(value) <= 0):
                positive = ", all positive" if name == "pixel_std" else ""
                problems.append(f"{name} {value!r} is not three finite numbers{positive}")
        return problems

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the 1024-px variants)."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (256 for the 1024-px variants)."""
        return 4 * self.embedding_size

    def to_dict(self) -> dict[str, Any]:
        """The architecture as plain JSON-able values."""
        out = dataclasses.asdict(self)
        for name in ("global_attn_indexes", "pixel_mean", "pixel_std"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "model config") -> SamConfig:
        """Build from a mapping (a variant file, a Hydra ``model`` node, a ``sam_config.json``).

        Unknown keys are an error that names them, so a typo never silently falls back to a default.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        try:
            return cls(**dict(values))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc


def variant_names() -> list[str]:
    """Names of the variants shipped in ``sam_engine/conf/model/``."""
    return sorted(p.name.removesuffix(".yaml") for p in VARIANTS.iterdir() if p.name.endswith(".yaml"))


def load_variant(name: str) -> SamConfig:
    """The SamConfig of a named variant, read from ``conf/model/<name>.yaml``."""
    path = VARIANTS / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown model variant '{name}'; choose one of {variant_names()}")
    return SamConfig.from_mapping(yaml.safe_load(path.read_text()), source=str(path))


def resolve_config(variant_or_config: str | Path | Mapping[str, Any] | SamConfig) -> SamConfig:
    """Accept a variant name, a SamConfig, a mapping, or a path to ``sam_config.json`` (or its directory)."""
    if isinstance(variant_or_config, SamConfig):
        return variant_or_config
    if isinstance(variant_or_config, Mapping):
        return SamConfig.from_mapping(variant_or_config)
    text = str(variant_or_config)
    path = Path(text)
    if path.is_dir():
        path = path / "sam_config.json"
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"model config file not found: {path}")
        try:
            values = parse_json(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return SamConfig.from_mapping(values, source=str(path))
    return load_variant(text)
