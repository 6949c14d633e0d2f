"""PyTorch twin of bench_unet.rs: same shapes, same network, same loss, same optimizer.

    THREADS=2 python3 torch_reference.py [conv|unet|all] [reps]

Run it interleaved with `cargo bench -p segmodel --bench bench_unet` on the same machine
(each in its own process) and compare the medians of the same round.
"""

import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("THREADS", "2")))


def cpu_ms():
    t = os.times()
    return (t.user + t.system) * 1e3


def timing(reps, warmup, f):
    for _ in range(warmup):
        f()
    times = []
    c0 = cpu_ms()
    for _ in range(reps):
        s = time.perf_counter()
        f()
        times.append((time.perf_counter() - s) * 1e3)
    cpu = (cpu_ms() - c0) / reps
    times.sort()
    return f"{times[len(times) // 2]:7.1f} ms (cpu {cpu:7.1f} ms)"


def conv(n, reps):
    x = torch.randn(n, 16, 64, 64, 64)
    w = (torch.randn(16, 16, 3, 3, 3) * 0.1).requires_grad_()
    b = torch.zeros(16, requires_grad=True)
    g = torch.randn(n, 16, 64, 64, 64)

    def fwd():
        with torch.no_grad():
            F.conv3d(x, w, b, padding=1)

    xg = x.clone().requires_grad_()

    def fb():
        y = F.conv3d(xg, w, b, padding=1)
        (y * g).sum().backward()
        xg.grad = w.grad = b.grad = None

    print(f"torch conv3d [{n},16,64,64,64] -> 16, k3 p1 + bias: fwd {timing(reps, 1, fwd)}   "
          f"fwd+bwd (dx, dW, db) {timing(reps, 1, fb)}")


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm3d(cout, affine=True)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm3d(cout, affine=True)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class UNet(nn.Module):
    def __init__(self, cin=1, classes=2, ch=(16, 32, 64, 128)):
        super().__init__()
        self.enc = nn.ModuleList(Block(cin if i == 0 else ch[i - 1], c) for i, c in enumerate(ch))
        self.up = nn.ModuleList(nn.ConvTranspose3d(ch[i + 1], ch[i], 2, stride=2) for i in range(len(ch) - 1))
        self.dec = nn.ModuleList(Block(2 * ch[i], ch[i]) for i in range(len(ch) - 1))
        self.head = nn.Conv3d(ch[0], classes, 1)

    def forward(self, x):
        skips = []
        for i, blk in enumerate(self.enc):
            if i > 0:
                x = F.max_pool3d(x, 2)
            x = blk(x)
            if i < len(self.enc) - 1:
                skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.dec[i](torch.cat([self.up[i](x), skips[i]], 1))
        return self.head(x)


def dice_loss(logits, labels, smooth=1e-5):
    p = torch.softmax(logits, 1)
    t = F.one_hot(labels.long(), logits.shape[1]).permute(0, 4, 1, 2, 3).to(p.dtype)
    dims = (0, 2, 3, 4)
    dice = (2 * (p * t).sum(dims) + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
    return 1 - dice[1:].mean()


def unet(batch, reps):
    torch.manual_seed(0)
    model = UNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 64, 64, 64)
    y = (torch.rand(batch, 64, 64, 64) >= 0.8).to(torch.uint8)

    def fwd():
        model(x)

    def step():
        opt.zero_grad(set_to_none=True)
        dice_loss(model(x), y).backward()
        opt.step()

    print(f"torch U-Net 16-32-64-128, input [{batch},1,64,64,64]: forward {timing(reps, 1, fwd)}   "
          f"train step (fwd+Dice+bwd+Adam) {timing(reps, 2, step)}")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}, reps: {reps}")
    if what in ("conv", "all"):
        conv(1, reps)
        conv(2, reps)
    if what in ("unet", "all"):
        unet(1, reps)
        unet(2, reps)
