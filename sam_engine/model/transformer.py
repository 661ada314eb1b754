"""SAM's two-way transformer: prompt tokens and image embedding attend to each other.

Each block runs (1) self-attention of the tokens, (2) cross-attention tokens -> image, (3) an MLP on
the tokens, (4) cross-attention image -> tokens; a final token -> image attention follows the
blocks. Attention runs through ``scaled_dot_product_attention`` (fused kernels where available), except
where one side holds a handful of tokens and the other the whole image (see ``Attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_engine.model.common import MLPBlock, mimetic_keys_


class Attention(nn.Module):
    """Multi-head attention whose queries, keys and values may be projected to a smaller width.

    ``downsample_rate`` divides the internal width (SAM uses 2 for the cross-attentions).

    Fresh keys are mimetic (``common.mimetic_keys_``): a prompt token and the image location of the same
    positional encoding attend to each other from the first step. Trained from scratch, the decoder
    otherwise sits on a long plateau where its masks ignore where the click is.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide the internal width {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        mimetic_keys_(self.q_proj.weight, self.k_proj.weight)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x D -> B x heads x N x D/heads."""
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
        q_pe: torch.Tensor | None = None,
        k_pe: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q: B x Nq x C, k and v: B x Nk x C -> B x Nq x C, plus ``residual`` (B or 1 x Nq x C) if given:
        a skip connection, added inside the output product where the image's side is folded.

        ``q_pe`` (1 x Nq x C) and ``k_pe`` (1 x Nk x C), if given, are positional encodings: the attention is
        that of ``q + q_pe`` to ``k + k_pe``. Given apart, an encoding of the image side is projected once
        and enters the scores through the few tokens' side, instead of being added to every prompt's image.

        Either side may have batch 1 where it is shared by every prompt (the image before the first
        block): it is projected once and broadcast, not once per prompt.

        Between a few tokens and a large image (heads x tokens < internal width: 8 x 7 < 128 for SAM's
        point prompts), the image side is never projected: the projections of the image are folded into
        the tokens' side (``_attend_few_queries``, ``_attend_few_keys``), the same attention in fewer
        operations. The decoder of the automatic mask generator spends most of its time here.
        """
        n_queries, n_keys = q.shape[1], k.shape[1]
        few = self.num_heads * min(n_queries, n_keys) < self.internal_dim
        if few and n_keys < n_queries:
            return self._attend_few_keys(q, _with_pe(k, k_pe), v, residual, q_pe)
        if few and n_queries < n_keys and k.shape[0] == q.shape[0]:
            out = self._attend_few_queries(_with_pe(q, q_pe), k, v, k_pe)
        else:  # as usual, or tokens attending to an image shared by the batch (projected once: _attend_shared_keys)
            out = self._attend(_with_pe(q, q_pe), _with_pe(k, k_pe), v)
        return out if residual is None else residual + out

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``forward`` without a residual or encodings, where neither side is folded into the other."""
        if k.shape[0] == 1 < q.shape[0]:
            return self._attend_shared_keys(q, k, v)
        q, k, v = (self._split_heads(proj(x)) for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
        batch = max(q.shape[0], k.shape[0])
        out = F.scaled_dot_product_attention(
            q.expand(batch, -1, -1, -1), k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        )
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))

    def _attend_shared_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of B x Nq queries to keys and values shared by the batch (1 x Nk x C): the B x Nq queries
        attend as one sequence of one batch, so the shared keys are neither copied nor projected per prompt."""
        batch, n_queries, _ = q.shape
        q, k, v = (self._split_heads(proj(x)) for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        merged = q.transpose(0, 1).reshape(1, heads, batch * n_queries, head_dim)
        out = F.scaled_dot_product_attention(merged, k, v).view(heads, batch, n_queries, head_dim)
        return self.out_proj(out.permute(1, 2, 0, 3).reshape(batch, n_queries, self.internal_dim))

    def _head_weights(self, projection: nn.Linear) -> torch.Tensor:
        """An input projection's weight per head: heads x D/heads x C.

        A parameter used twice in a forward pass is taken once, through this view, and the view used twice:
        autograd then adds the two gradients at the view, in the same order whether the parameter is a leaf
        (DDP) or a view into a flat buffer (FSDP), and the two strategies train bit for bit alike.
        """
        return projection.weight.view(self.num_heads, -1, projection.weight.shape[1])

    def _attend_few_queries(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pe: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of Nq tokens to Nk >> Nq image positions (arguments and result as ``forward``).

        Score of query i, head h, key j: q_ih . (W_k,h x_j + b_k,h) = (W_k,h^T q_ih) . x_j + const(i, h),
        and a constant along j leaves the softmax unchanged. Output: sum_j a_ihj (W_v,h x_j + b_v,h) =
        W_v,h (sum_j a_ihj x_j) + b_v,h. The image enters two batched products of B x (heads Nq) x C.
        The keys' encoding adds q_ih . (W_k,h p_j): a product of the head's D/heads values, not of C.
        """
        batch, n_queries, _ = q.shape
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        queries = self.q_proj(q).view(batch, n_queries, heads, head_dim) * head_dim**-0.5
        key_weight = self._head_weights(self.k_proj)
        folded = torch.einsum("bnhd,hdc->bhnc", queries, key_weight)
        scores = folded.reshape(batch, heads * n_queries, -1) @ k.transpose(1, 2)  # B x heads Nq x Nk
        if k_pe is not None:  # (the bias would add a constant along j)
            scores = _add_head_scores(scores, queries, F.linear(k_pe[0], key_weight.flatten(0, 1)))
        mixed = (_softmax(scores, dim=-1) @ v).view(batch, heads, n_queries, -1)  # B x heads x Nq x C
        out = torch.einsum("bhnc,hdc->bnhd", mixed, self._head_weights(self.v_proj))
        out = out + self.v_proj.bias.view(heads, head_dim)
        return self.out_proj(out.reshape(batch, n_queries, self.internal_dim))

    def _attend_few_keys(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None,
        q_pe: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention of Nq image positions to Nk << Nq tokens (arguments and result as ``forward``).

        Score of query i, head h, key j: (W_q,h x_i + b_q,h) . k_jh = (W_q,h^T k_jh) . x_i + b_q,h . k_jh.
        Output: W_o (concat_h sum_j a_ihj v_jh) + b_o = sum_h sum_j a_ihj (W_o,h v_jh + b_o / heads), as each
        head's weights sum to 1; the product starts from the residual, so no pass adds either. The image
        enters two batched products with B x (heads Nk) x C matrices. Scores are laid out B x heads x Nk x
        Nq, so the softmax over the Nk keys runs along contiguous rows of queries. The queries' encoding
        adds (W_q,h p_i) . k_jh, a product of the head's D/heads values, which carries the bias term too.
        """
        n_queries, n_keys = q.shape[1], k.shape[1]
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        keys = self.k_proj(k).view(-1, n_keys, heads, head_dim) * head_dim**-0.5
        query_weight = self._head_weights(self.q_proj)
        folded = torch.einsum("bjhd,hdc->bhjc", keys, query_weight)  # B x heads x Nk x C
        batch = folded.shape[0]
        if q.shape[0] == 1:  # an image shared by the batch: one product, no copy of it per prompt
            scores = (folded.reshape(-1, q.shape[2]) @ q[0].T).view(batch, heads * n_keys, n_queries)
        else:
            scores = folded.flatten(1, 2) @ q.transpose(1, 2)
        bias = self.q_proj.bias
        encoded = bias.expand(n_queries, -1) if q_pe is None else F.linear(q_pe[0], query_weight.flatten(0, 1), bias)
        scores = _add_head_scores(scores, keys, encoded)  # B x heads Nk x Nq
        weights = _softmax(scores.view(batch, heads, n_keys, n_queries), dim=2).view(batch, heads * n_keys, n_queries)
        values = self.v_proj(v).view(-1, n_keys, heads, head_dim)
        out_weight = self.out_proj.weight.view(-1, heads, head_dim)  # C x heads x D/heads
        folded_values = torch.einsum("bjhd,chd->bhjc", values, out_weight)  # B x heads x Nk x C
        if residual is None:
            return torch.baddbmm(self.out_proj.bias, weights.transpose(1, 2), folded_values.flatten(1, 2))
        folded_values = (folded_values + self.out_proj.bias / heads).flatten(1, 2)
        return torch.baddbmm(residual, weights.transpose(1, 2), folded_values)


def _with_pe(x: torch.Tensor, pe: torch.Tensor | None) -> torch.Tensor:
    """``x`` with its positional encoding added, if any."""
    return x if pe is None else x + pe


def _add_head_scores(scores: torch.Tensor, tokens: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
    """``scores`` (B x heads N x M) plus, per head, the tokens' products with an encoded image side.

    Arguments:
        tokens: B x N x heads x D/heads, projected tokens (N: the few side).
        encoded: M x D, the image side's encoding, projected (M: the many side).
    Returns:
        B x heads N x M: scores[b, h N + n, m] + tokens[b, n, h] . encoded[m, h]; in place unless a gradient
        is recorded.
    """
    batch, n_tokens, heads, head_dim = tokens.shape
    per_head = tokens.permute(2, 0, 1, 3).reshape(heads, batch * n_tokens, head_dim)
    products = per_head @ encoded.view(-1, heads, head_dim).permute(1, 2, 0)  # heads x B N x M
    products = products.view(heads, batch, n_tokens, -1).transpose(0, 1)  # B x heads x N x M, a view
    grid = scores.view(batch, heads, n_tokens, -1)
    return (grid + products if torch.is_grad_enabled() else grid.add_(products)).view(scores.shape)


def _softmax(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax along ``dim`` with its subnormal weights (below ``finfo.tiny``, about 1e-38) set to 0.

    A confident attention over thousands of image positions gives most of them weights that underflow to
    subnormal numbers; an x86 CPU multiplies those many times slower (docs/performance.md), and they add
    less than 1e-38 to any result. ONNX has no such threshold: an exported graph keeps them.
    """
    weights = scores.softmax(dim=dim)  # in place where no gradient needs the softmax's output
    if torch.onnx.is_in_onnx_export():
        return weights
    return F.threshold(weights, torch.finfo(weights.dtype).tiny, 0.0, inplace=not torch.is_grad_enabled())


class TwoWayAttentionBlock(nn.Module):
    """One block of the two-way transformer (see the module docstring).

    ``skip_first_layer_pe``: the first block's self-attention sees the tokens without their
    positional encoding (the tokens *are* the prompt encodings at that point).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, act_layer=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries: B x Nt x C tokens, keys: B x Ni x C image (or 1 x Ni x C, shared) -> updated
        (queries, keys), both with batch B."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys, keys, k_pe=key_pe))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(
            self.cross_attn_image_to_token(keys, queries + query_pe, queries, residual=keys, q_pe=key_pe)
        )
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of TwoWayAttentionBlocks and a final token -> image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        returned_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
            image_embedding: B x C x h x w, or 1 x C x h x w shared by the B prompts (the first block
                then projects it once).
            image_pe: 1 x C x h x w, its positional encoding (the same for every prompt).
            point_embedding: B x Nt x C, the output and prompt tokens.
            returned_tokens: if given, only the first this many tokens go through the final attention
                and are returned (each token's final attention is its own).
        Returns:
            tokens: B x Nt x C (B x returned_tokens x C); image: B x h*w x C.
        """
        if image_pe.shape[0] != 1:
            raise ValueError(f"image_pe must have batch 1 (shared by every prompt), got {tuple(image_pe.shape)}")
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=key_pe)
        queries, point_embedding = queries[:, :returned_tokens], point_embedding[:, :returned_tokens]
        attn_out = self.final_attn_token_to_image(queries + point_embedding, keys, keys, k_pe=key_pe)
        return self.norm_final_attn(queries + attn_out), keys
