"""Drop rep3d's large-kernel layer into a MONAI UNet, train it a few steps, fold it for deployment.

What it shows:

* ``rep3d.layers.RepLKConv3d`` with the learnable receptive-field mask (``modulation="lrbm"``, the paper's
  ``W * M`` with ``M = P + f(P)``, built on ``rep3d.layers.ModulatedKernelParam``) placed after every encoder conv
  of ``monai.networks.nets.UNet``, by subclassing the UNet's ``_get_down_layer`` hook (MONAI's own way to change
  a block);
* a few training steps on synthetic CT-like phantoms (``rep3d.data.make_phantom``; SYNTHETIC data, no anatomy);
* the mask's health after training (``rep3d.layers.mask_health``: does the generator receive gradient, how far
  ``M`` moved from the prior ``P``);
* ``rep3d.reparameterize_model``: every mask and BatchNorm folded into one plain depthwise conv with bias, and a
  check that the folded network computes the same outputs (max abs difference printed).

Run (about 20 s on one CPU core at the defaults: 100 steps, 32³ phantoms, 13³ kernels)::

    python examples/monai_unet_with_replk.py
    python examples/monai_unet_with_replk.py --size 48 --kernel-size 21 --steps 200 --threads 2
    python examples/monai_unet_with_replk.py --smoke          # the tiny run the tests use
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import nn

import rep3d
from rep3d.data import DEFAULT_SPACING, DEFAULT_WINDOW, PHANTOM_CLASSES, make_phantom
from rep3d.layers import RepLKConv3d, mask_health
from rep3d.metrics import dice_per_class, mean_dice


class LargeKernelUNet(UNet):
    """MONAI's UNet with a large-kernel block ``GELU(RepLKConv3d(x))`` after each encoder conv and the bottleneck.

    ``RepLKConv3d`` is depthwise, stride 1, "same" padding and has its own BatchNorm, so it keeps the shape and the
    channel count of the MONAI block it follows: nothing else in the UNet changes.
    """

    def __init__(self, *args, large_kernel: int = 13, modulation: str | None = "lrbm", **kwargs) -> None:
        # UNet.__init__ builds the blocks (calling _get_down_layer), so these must be set first
        self.large_kernel = large_kernel
        self.modulation = modulation
        super().__init__(*args, **kwargs)

    def _get_down_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        block = super()._get_down_layer(in_channels, out_channels, strides, is_top)
        large = RepLKConv3d(out_channels, self.large_kernel, modulation=self.modulation)
        return nn.Sequential(block, large, nn.GELU())


def phantom_batch(seeds: list[int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image [B, 1, S, S, S] in [0, 1], label [B, 1, S, S, S])`` from synthetic phantoms of ``size``³ voxels."""
    images, labels = [], []
    lo, hi = DEFAULT_WINDOW
    for seed in seeds:
        case = make_phantom(seed, shape=(size, size, size), spacing=DEFAULT_SPACING)
        images.append(np.clip((case.image - lo) / (hi - lo), 0.0, 1.0))
        labels.append(case.label.astype(np.int64))
    return torch.from_numpy(np.stack(images))[:, None].float(), torch.from_numpy(np.stack(labels))[:, None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32, help="phantom edge in voxels (multiple of 8)")
    parser.add_argument("--kernel-size", type=int, default=13, help="large kernel (odd)")
    parser.add_argument("--steps", type=int, default=100, help="training steps")
    parser.add_argument("--batch", type=int, default=2, help="phantoms per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check (as in the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.kernel_size, args.steps, args.batch = 16, 7, 3, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    num_classes = len(PHANTOM_CLASSES)
    model = LargeKernelUNet(
        spatial_dims=3, in_channels=1, out_channels=num_classes, channels=(8, 16, 32), strides=(2, 2),
        num_res_units=1, large_kernel=args.kernel_size, modulation="lrbm",
    )
    large = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    params = sum(p.numel() for p in model.parameters())
    print(f"LargeKernelUNet: MONAI UNet + {len(large)} RepLKConv3d (kernel {args.kernel_size}³, learnable mask), "
          f"{params} parameters")

    # ---- train a few steps on SYNTHETIC phantoms (a fresh pair of phantoms per step)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    model.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(args.steps):
        seeds = [args.seed * 100_000 + step * args.batch + i for i in range(args.batch)]
        image, label = phantom_batch(seeds, args.size)
        loss = loss_fn(model(image), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"trained {args.steps} steps on {args.batch} x {args.size}³ SYNTHETIC phantoms in "
          f"{time.perf_counter() - t0:.1f} s: loss {losses[0]:.4f} -> {losses[-1]:.4f}")

    # ---- the learned masks: the generator gets gradient, M moves away from the prior P
    for name, stats in mask_health(model).items():
        grad = stats["generator_grad_norm"]
        print(f"mask {name}: M/P centre {stats['ratio_centre']:.4f}, ring1 {stats['ratio_ring1']:.4f}, "
              f"edge {stats['ratio_edge']:.4f}, negative {stats['negative']:.3f}, "
              f"generator grad norm {'none' if grad is None else f'{grad:.3g}'}")

    # ---- fold for deployment and check the folded network computes the same function
    model.eval()
    image, label = phantom_batch([args.seed * 100_000 + 99_999], args.size)  # a phantom training never saw
    with torch.no_grad():
        before = model(image)
    deployed = rep3d.reparameterize_model(model)  # a folded copy; `model` keeps its training form
    with torch.no_grad():
        after = deployed(image)
    folded = [m for m in deployed.modules() if isinstance(m, RepLKConv3d)]
    assert all(m.deploy for m in folded)
    diff = float((after - before).abs().max())
    scale = float(before.abs().max())
    dice = dice_per_class(before.argmax(1), label[:, 0], num_classes)
    print(f"deployed: {len(folded)} RepLKConv3d folded to plain depthwise convs with bias, "
          f"{sum(p.numel() for p in deployed.parameters())} parameters (train form {params})")
    print(f"held-out SYNTHETIC phantom: mean Dice {mean_dice(dice):.4f} after {args.steps} steps")
    print(f"deploy vs train max abs diff: {diff:.3e} (output scale {scale:.3g})")
    if not diff <= 1e-5 * max(scale, 1.0):  # float32 rounding, relative to the output's size
        raise SystemExit(f"the folded model differs from the trained one by {diff:.3e}")


if __name__ == "__main__":
    main()
