"""Does ``torch.compile`` (which nnU-Net switches on for CUDA training) handle a rep3d network?

Compiles :class:`~rep3d.integrations.nnunet.network.Rep3DnnUNet` (deep supervision on), runs one forward + backward,
and prints the largest difference to eager mode, whether every parameter got a gradient, the compile time and
Dynamo's graph-break count and reasons (``torch._dynamo.explain``).

    python benchmarks/nnunet_compile.py --model rep3d_tiny --kernel-size 21 --patch 32 32 32 --backend auto
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="rep3d_tiny")
    parser.add_argument("--kernel-size", type=int, default=21)
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 32, 32])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--backend", default="auto", choices=["auto", "fft", "direct"],
                        help="rep3d's large-kernel conv engine")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from rep3d.integrations.nnunet import NNUNET_STRIDES, Rep3DnnUNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = Rep3DnnUNet(1, 3, True, model=args.model, kernel_size=args.kernel_size, strides=NNUNET_STRIDES,
                      conv_backend=args.backend).to(args.device)
    x = torch.randn(args.batch, 1, *args.patch, device=args.device)
    eager = [o.detach() for o in net(x)]
    explain = torch._dynamo.explain(net)(x)
    torch._dynamo.reset()
    t = time.perf_counter()
    out = torch.compile(net)(x)
    sum(o.float().mean() for o in out).backward()
    seconds = time.perf_counter() - t
    diff = max((a - b).abs().max().item() for a, b in zip(out, eager))
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    reasons = Counter(str(r.reason).split("\n")[0] for r in explain.break_reasons)
    print(f"torch {torch.__version__}, {args.device}, {args.model} k{args.kernel_size} ({args.backend}), "
          f"patch {args.patch}, batch {args.batch}")
    print(f"compiled forward+backward: {seconds:.0f} s (first call, includes compilation); max |compiled - eager| "
          f"{diff:.2e}; parameters without gradient: {len(missing)}")
    print(f"graphs {explain.graph_count}, graph breaks {explain.graph_break_count}:")
    for reason, count in reasons.most_common():
        print(f"  {count} x {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
