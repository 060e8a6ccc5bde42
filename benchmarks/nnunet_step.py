"""Time per nnU-Net training step: rep3d (``Rep3DnnUNet``) vs nnU-Net's default ``PlainConvUNet`` on the same plan.

Both networks get the same patch, batch and classes, nnU-Net's own loss (Dice + CE under its deep-supervision
wrapper, weights 1/2^i with the lowest output at 0) and their trainer's optimiser (nnU-Net: SGD Nesterov 0.99;
rep3d: AdamW without decay on norms / biases), and run the step nnU-Net's ``train_step`` runs (forward, loss,
backward, clipping, optimiser step). The default network's topology comes from nnU-Net's planner function
(``get_pool_and_conv_props``, feature map edge >= 4, 32..320 features). Steps alternate between the two networks
so they share the machine's load; medians over ``--repeats`` steps after one warm-up step each, as wall time and
as the process's CPU time (on a shared machine the latter is the load-independent number).

    pip install "rep3d[nnunet]"
    python benchmarks/nnunet_step.py --patch 80 96 96 --batch 2 --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def plain_conv_unet_kwargs(spacing, patch):
    """nnU-Net's default 3d_fullres architecture for this spacing and patch (its planner's rules)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, patch_out, _ = get_pool_and_conv_props(spacing, patch, 4, 999999)
    n = len(strides)
    return dict(n_stages=n, features_per_stage=[min(320, 32 * 2**i) for i in range(n)],
                conv_op="torch.nn.modules.conv.Conv3d", kernel_sizes=kernels, strides=strides,
                n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1), conv_bias=True,
                norm_op="torch.nn.modules.instancenorm.InstanceNorm3d", norm_op_kwargs={"eps": 1e-5, "affine": True},
                dropout_op=None, dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU",
                nonlin_kwargs={"inplace": True}), [int(p) for p in patch_out]


def build(args):
    import numpy as np
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from timm.optim import param_groups_weight_decay

    from rep3d.integrations.nnunet import NNUNET_STRIDES
    from rep3d.integrations.nnunet.trainer import recipe_values

    plain_kwargs, patch = plain_conv_unet_kwargs(args.spacing, args.patch)
    if patch != list(args.patch):
        raise SystemExit(f"nnU-Net's topology changes the patch {args.patch} to {patch}; pass that patch")
    req = ("conv_op", "norm_op", "dropout_op", "nonlin")
    nets = {}
    torch.manual_seed(0)
    nets["nnU-Net PlainConvUNet"] = (get_network_from_plans(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet", plain_kwargs, req, 1, args.classes,
        deep_supervision=True), plain_kwargs["strides"])
    rep3d_kwargs = dict(model=args.model, kernel_size=args.kernel_size, strides=NNUNET_STRIDES)
    nets[f"{args.model} k{args.kernel_size}"] = (get_network_from_plans(
        "rep3d.integrations.nnunet.network.Rep3DnnUNet", rep3d_kwargs, (), 1, args.classes, deep_supervision=True),
        NNUNET_STRIDES)
    recipe = recipe_values()
    runs = {}
    for name, (net, strides) in nets.items():
        net.train()
        scales = list(list(i) for i in 1 / np.cumprod(np.vstack(strides), axis=0))[:-1]
        weights = np.array([1 / 2**i for i in range(len(scales))])
        weights[-1] = 0
        loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False,
                                                      "ddp": False}, {}, weight_ce=1, weight_dice=1,
                                                     ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss),
                                      weights / weights.sum())
        if name.startswith("nnU-Net"):
            opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
            clip = 12.0
        else:
            opt = torch.optim.AdamW(param_groups_weight_decay(net, recipe["weight_decay"]), lr=recipe["lr"])
            clip = recipe["grad_clip"]
        x = torch.randn(args.batch, 1, *patch)
        y = torch.randint(0, args.classes, (args.batch, 1, *patch)).float()
        targets = [torch.nn.functional.interpolate(y, size=[round(p * s) for p, s in zip(patch, sc)], mode="nearest")
                   for sc in scales]
        runs[name] = dict(net=net, loss=loss, opt=opt, clip=clip, x=x, targets=targets,
                          params=sum(p.numel() for p in net.parameters()), times=[], cpu_times=[])
    return runs, patch


def step(run) -> tuple[float, float]:
    """One training step: (wall seconds, CPU seconds of this process)."""
    import torch

    t, c = time.perf_counter(), time.process_time()
    run["opt"].zero_grad(set_to_none=True)
    out = run["net"](run["x"])
    loss = run["loss"](out, run["targets"])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run["net"].parameters(), run["clip"])
    run["opt"].step()
    return time.perf_counter() - t, time.process_time() - c


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch", type=int, nargs=3, default=[80, 96, 96])
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--model", default="rep3d_tiny")
    parser.add_argument("--kernel-size", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    runs, patch = build(args)
    for r in range(args.repeats + 1):
        for name, run in runs.items():
            wall, cpu = step(run)
            if r > 0:  # the first round is warm-up
                run["times"].append(wall)
                run["cpu_times"].append(cpu)
            print(f"round {r} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr, flush=True)
    print(f"\nnnU-Net training step, CPU float32, {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}; patch {patch}, batch {args.batch}, {args.classes} classes, "
          f"median of {args.repeats} after 1 warm-up, alternating\n")
    print("| network | params | step, wall (s) | step, process CPU (s) | CPU time vs nnU-Net |\n|---|---|---|---|---|")
    first = next(iter(runs.values()))
    base = statistics.median(first["cpu_times"])
    rows = {}
    for name, run in runs.items():
        med, cpu = statistics.median(run["times"]), statistics.median(run["cpu_times"])
        rows[name] = dict(params=run["params"], median_wall_s=med, median_cpu_s=cpu, wall_s=run["times"],
                          cpu_s=run["cpu_times"])
        print(f"| {name} | {run['params'] / 1e6:.1f}M | {med:.2f} | {cpu:.2f} | {cpu / base:.2f}x |")
    print("\nProcess CPU time is what a step costs without competing load (1 thread: wall = CPU on an idle core).")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "torch": torch.__version__,
                                         "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
