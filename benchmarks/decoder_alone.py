"""How fast SAM's prompt encoder and mask decoder learn mask geometry with no image to look at.

    python benchmarks/decoder_alone.py                              # the tiny variant as built, 200 steps
    python benchmarks/decoder_alone.py --start zero_hypernetwork --steps 200
    python benchmarks/decoder_alone.py --start sharper_attention --gain 2 --focal-weight 0

A fresh model's prompt encoder and mask decoder are trained on ground-truth masks of embedded-style
scenes at the model's input size (``--masks`` per step, half prompted by a noisy box, half by one click,
one pass, stage 1's loss) over an image embedding that says nothing about the image: zeros, or with
``--start position_embedding`` the decoder's own dense positional encoding. The image encoder is not
used. The printed training IoU shows how many steps the decoder spends on the empty-mask plateau
before it draws anything where the prompt is, the part of a from-scratch training the image cannot
shorten. ``--start`` changes the initialisation:

- ``as_built``: the model as ``build_sam`` makes it (mimetic keys: each attention starts as the similarity
  of its queries and keys, positional encodings included; ``common.mimetic_keys_``);
- ``zero_hypernetwork``: the output layer of each mask token's hypernetwork MLP at zero (every logit 0);
- ``sharper_attention``: the query and key projections of every decoder attention times ``--gain``, so
  that its starting logits are ``gain**2`` times sharper;
- ``position_embedding``: the image embedding is the dense positional encoding, normalised per position.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from official_quality import embedded_scene_spec

from sam_engine.data.synthetic.scenes import generate_scene
from sam_engine.model import build_sam
from sam_engine.model.sam import Sam
from sam_engine.train.interactive import simulate_training
from sam_engine.train.settings import SimulationConfig

STARTS = ("as_built", "zero_hypernetwork", "sharper_attention", "position_embedding")


def scene_masks(size: int, num_scenes: int) -> torch.Tensor:
    """M x size x size bool: every mask of ``num_scenes`` scenes with the embedded dataset's object settings
    (its smallest mask area scaled to ``size``)."""
    embedded = embedded_scene_spec()
    spec = dataclasses.replace(embedded, image_size=size,
                               min_mask_area=round(embedded.min_area * (size / embedded.image_size) ** 2))
    return torch.cat([torch.from_numpy(np.ascontiguousarray(generate_scene(77, i, spec).masks))
                      for i in range(num_scenes)])


def image_embedding(model: Sam, start: str) -> torch.Tensor:
    """1 x C x h x w: zeros, or the dense positional encoding normalised over channels."""
    if start == "position_embedding":
        pe = model.prompt_encoder.get_dense_pe().detach()
        return (pe - pe.mean(1, keepdim=True)) / pe.std(1, keepdim=True)
    side = model.img_size // model.config.patch_size
    return torch.zeros(1, model.config.prompt_embed_dim, side, side)


@torch.no_grad()
def initialise(model: Sam, start: str, gain: float) -> None:
    """Change the fresh decoder's weights as ``start`` says (``as_built`` and ``position_embedding``: none)."""
    decoder = model.mask_decoder
    if start == "zero_hypernetwork":
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.zero_()
    elif start == "sharper_attention":
        for module in decoder.transformer.modules():
            if hasattr(module, "q_proj"):
                module.q_proj.weight.mul_(gain)
                module.k_proj.weight.mul_(gain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--start", choices=STARTS, default="as_built")
    parser.add_argument("--gain", type=float, default=2.0, help="sharper_attention: scale of queries and keys")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--masks", type=int, default=64, help="masks per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--focal-weight", type=float, default=20.0, help="stage 1: 20 (focal : dice 20 : 1)")
    parser.add_argument("--every", type=int, default=25, help="print every this many steps")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_sam(args.variant).train()
    initialise(model, args.start, args.gain)
    embedding = image_embedding(model, args.start)
    masks = scene_masks(model.img_size, num_scenes=400)
    params = [p for name, p in model.named_parameters() if not name.startswith("image_encoder")]
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1)
    config = SimulationConfig(num_click_rounds=0, box_probability=0.5, focal_weight=args.focal_weight)
    generator = torch.Generator().manual_seed(0)
    same_image = torch.zeros(args.masks, dtype=torch.int64)
    print(f"{args.variant}, start {args.start}, {len(masks)} masks, {args.masks} per step, lr {args.lr}, "
          f"focal : dice {args.focal_weight:g} : 1")
    print(f"{'step':>5} {'loss':>7} {'train IoU':>10} {'seconds':>8}")
    started = time.perf_counter()
    for step in range(args.steps):
        batch = masks[torch.randint(len(masks), (args.masks,), generator=generator)]
        result = simulate_training(model, embedding, same_image, batch, config, generator)
        loss = result.total / result.num_masks
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        if step % args.every == 0 or step == args.steps - 1:
            print(f"{step:>5} {loss.item():>7.3f} {(result.last_iou / result.num_masks).item():>10.3f} "
                  f"{time.perf_counter() - started:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
