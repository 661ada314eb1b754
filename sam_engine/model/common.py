"""Small layers shared by the encoder and the decoder."""

from __future__ import annotations

import torch
from torch import nn

CPU_CHUNK_BYTES = 2**24
"""Bytes of activations a CPU computes at once where ``batch_chunk`` splits a batch (16 MiB)."""


def batch_chunk(device: torch.device, bytes_per_item: int, batch: int) -> int:
    """How many items of a batch to compute together: on a CPU, as many as fill ``CPU_CHUNK_BYTES``.

    Element-wise passes (additions, norms, activations) over a CPU's main memory are its bottleneck at
    1024 px; over chunks that stay in its caches between operations they run faster (docs/performance.md).
    A GPU gets the whole batch (always at least 1).
    """
    if device.type != "cpu":
        return max(1, batch)
    return max(1, CPU_CHUNK_BYTES // bytes_per_item)


@torch.no_grad()
def mimetic_keys_(query_weight: torch.Tensor, key_weight: torch.Tensor) -> None:
    """Set ``key_weight`` (out x in) to a multiple of ``query_weight``, in place, so that
    ``query_weight.T @ key_weight`` has unit mean diagonal: the mimetic initialisation of attention
    (Trockman & Kolter, "Mimetic Initialization of Self-Attention Layers", ICML 2023).

    Inputs that share a direction (the same positional encoding on a query and a key, say) then
    attend to each other from the first step, which shortens the plateau a transformer trained from
    scratch spends before its attention depends on position. Only fresh weights get it; loading a
    checkpoint replaces it like any other initial value.
    """
    key_weight.copy_(query_weight * query_weight.shape[1] / query_weight.square().sum())


class MLPBlock(nn.Module):
    """Linear-activation-linear with SAM's parameter names (``lin1``, ``lin2``).

    The keyword names are those timm passes to its ``mlp_layer`` factory, so the image encoder's
    blocks use this class too. ``drop`` is dropout after the activation and after ``lin2``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.lin1 = nn.Linear(in_features, hidden_features, device=device, dtype=dtype)
        self.act = act_layer()
        self.lin2 = nn.Linear(hidden_features, in_features, device=device, dtype=dtype)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """... x in_features -> ... x in_features."""
        return self.drop(self.lin2(self.drop(self.act(self.lin1(x)))))
