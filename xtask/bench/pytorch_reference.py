"""PyTorch reference for `cargo xtask bench --vs-pytorch`.

The identical network, loss, optimizer and batch as siam's benchmark: the seed CNN
(Conv 1->32 5x5, ReLU, MaxPool 2, Conv 32->64 3x3, ReLU, MaxPool 2, Linear 1600->128) at
28x28, contrastive loss mean(same*d^2 + (1-same)*relu(m-d)^2) with m = 2 and
d = sqrt(sum((a-b)^2) + 1e-12), AdamW(lr 1e-3, weight decay 0), 128 pairs (256 images) per
step, 5 steps per timed repetition; inference in eval mode at batch 1024 under no_grad.
The inputs follow the same formula as the Rust side. PyTorch keeps its default settings
except the thread count, which is set to siam's.

With --encoder convnet, siam's deeper encoder instead: blocks of two 3x3 convolutions
(padding 1, no bias) each followed by BatchNorm and ReLU, channels 32-64-128, 2x2 max-pooling
between blocks, then (--pooling flatten, the convnet preset) the 128x7x7 map flattened or
(--pooling global-average) its mean over positions, Linear -> 256, ReLU, Linear 256->128.

With --encoder resnet18, torchvision's resnet18 (random weights) with its classifier as siam's
head, Linear(512 -> 128), on RGB inputs of --size x --size.

Prints one JSON object: train_pairs_per_s and infer_images_per_s (medians of --reps).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn


def images(k, seed, shape=(1, 28, 28)):
    c, h, w = shape
    i = torch.arange(k * c * h * w, dtype=torch.int64)
    v = ((i * 2654435761 + seed) % 997).to(torch.float32) / 997.0
    return v.reshape(k, c, h, w)


class SeedCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc = nn.Linear(1600, 128)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class Block(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )


class ConvNet(nn.Module):
    def __init__(self, pooling, channels=(32, 64, 128), hidden=256, dim=128):
        super().__init__()
        cins = (1,) + tuple(channels[:-1])
        self.blocks = nn.ModuleList(Block(a, b) for a, b in zip(cins, channels))
        self.pooling = pooling
        side = 28 // 2 ** (len(channels) - 1)
        features = channels[-1] * (side * side if pooling == "flatten" else 1)
        self.hidden = nn.Linear(features, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x):
        for i, b in enumerate(self.blocks):
            x = b(x)
            if i < len(self.blocks) - 1:
                x = torch.max_pool2d(x, 2)
        x = x.flatten(1) if self.pooling == "flatten" else x.mean((2, 3))
        return self.out(torch.relu(self.hidden(x)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--infer-batch", type=int, default=1024)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--encoder", choices=["seed-cnn", "convnet", "resnet18"], default="seed-cnn")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--pooling", choices=["flatten", "global-average"], default="flatten")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    shape = (1, 28, 28)
    if a.encoder == "seed-cnn":
        model = SeedCnn()
    elif a.encoder == "convnet":
        model = ConvNet(a.pooling)
    else:
        import torchvision

        model = torchvision.models.resnet18(num_classes=128)
        shape = (3, a.size, a.size)
    n = a.pairs
    xa, xb = images(n, 1, shape), images(n, 2, shape)
    same = (torch.arange(n) % 2).to(torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    steps = 5

    def train():
        model.train()
        for _ in range(steps):
            e = model(torch.cat([xa, xb], 0))
            d = torch.sqrt(((e[:n] - e[n:]) ** 2).sum(1) + 1e-12)
            loss = (same * d**2 + (1 - same) * torch.relu(2.0 - d) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    xi = images(a.infer_batch, 3, shape)

    def infer():
        model.eval()
        with torch.no_grad():
            model(xi)

    def timed(f, reps):
        f()  # warm-up
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    print(
        json.dumps(
            {
                "train_pairs_per_s": steps * n / timed(train, a.reps),
                "infer_images_per_s": a.infer_batch / timed(infer, a.reps),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
