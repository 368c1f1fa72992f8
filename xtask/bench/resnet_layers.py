"""PyTorch's side of `xtask/examples/resnet_layers.rs`: ResNet-18's convolutions one at a time
(torch.nn.Conv2d, 2 threads), median time of forward + backward (or forward alone under
no_grad) per layer shape.

python3 xtask/bench/resnet_layers.py SIDE IMAGES train|infer [LAYER [REPS]]
"""
import math
import sys
import time

import torch


def layers(side):
    out = [(3, 64, 7, 2, side)]
    # The stem halves the side, max-pooling halves it again (both rounding up).
    cin, m = 64, math.ceil(math.ceil(side / 2) / 2)
    for stage, w in enumerate([64, 128, 256, 512]):
        if stage > 0:
            out += [(cin, w, 3, 2, m), (cin, w, 1, 2, m)]
            m = math.ceil(m / 2)
        out.append((w, w, 3, 1, m))
        cin = w
    return out


def main():
    torch.set_num_threads(2)
    a = sys.argv[1:]
    side = int(a[0]) if len(a) > 0 else 112
    n = int(a[1]) if len(a) > 1 else 32
    train = (a[2] if len(a) > 2 else "train") == "train"
    only = int(a[3]) if len(a) > 3 else None
    reps = max(1, int(a[4]) if len(a) > 4 else 7)
    for i, (ci, co, k, s, h) in enumerate(layers(side)):
        if only is not None and only != i:
            continue
        x = torch.randn(n, ci, h, h, requires_grad=(ci != 3 and train))
        conv = torch.nn.Conv2d(ci, co, k, s, k // 2, bias=False)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            if train:
                conv(x).sum().backward()
            else:
                with torch.no_grad():
                    conv(x).sum()
            times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        print(f"{ci:4}->{co:4} k{k} s{s} {h:3}x{h:<3} {times[reps // 2]:8.2f} ms")


if __name__ == "__main__":
    main()
