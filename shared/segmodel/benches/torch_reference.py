"""PyTorch twin of bench_unet.rs: same shapes, same network, same loss, same optimizer.

    THREADS=2 python3 torch_reference.py [conv|unet|all] [reps]
    THREADS=2 python3 torch_reference.py train [reps]           # batch-2 train step
    THREADS=2 python3 torch_reference.py sliding DxHxW [reps]   # MONAI sliding window

Run it interleaved with `cargo bench -p segmodel --bench bench_unet` on the same machine
(each in its own process) and compare the medians of the same round. `train` and
`sliding` end with one `RESULT {json}` line that `scripts/bench-train` collects; `sliding`
needs `monai`. `TORCH_DEVICE=cuda` runs `train` and `sliding` on the GPU (timed with
`torch.cuda.synchronize()`; the RESULT line then adds the peak GPU memory), as
`scripts/device-check.sh` does; `TRAIN_PATCH` sets the training patch edge (default 64).
"""

import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def cpu_ms():
    t = os.times()
    return (t.user + t.system) * 1e3


def status_mib(field):
    """A /proc/self/status memory field in MiB (VmHWM: peak RSS, VmRSS: now; 0 without /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def median_ms(reps, warmup, f):
    """Median wall ms over `reps` runs after `warmup` runs, and mean CPU ms per run."""
    for _ in range(warmup):
        f()
    times = []
    c0 = cpu_ms()
    sync()
    for _ in range(reps):
        s = time.perf_counter()
        f()
        sync()
        times.append((time.perf_counter() - s) * 1e3)
    cpu = (cpu_ms() - c0) / reps
    times.sort()
    return times[len(times) // 2], cpu


def timing(reps, warmup, f):
    wall, cpu = median_ms(reps, warmup, f)
    return f"{wall:7.1f} ms (cpu {cpu:7.1f} ms)"


def result(bench, wall, cpu, voxels, reps, windows, baseline):
    """The line scripts/bench-train parses (same keys as bench_unet.rs)."""
    print("RESULT " + json.dumps({
        "impl": "pytorch", "bench": bench, "median_ms": round(wall, 1), "cpu_ms": round(cpu, 1),
        "voxels": voxels, "reps": reps, "windows": windows, "threads": torch.get_num_threads(),
        "peak_rss_mib": round(status_mib("VmHWM")), "baseline_rss_mib": round(baseline),
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": DEVICE.type,
        **({"peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20)}
           if DEVICE.type == "cuda" else {}),
    }), flush=True)


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


def baseline_mib():
    """RSS after the imports and one tiny op: the libraries' share of the peak."""
    F.conv3d(torch.ones(1, 1, 4, 4, 4), torch.ones(1, 1, 3, 3, 3), padding=1)
    return status_mib("VmRSS")


def train(reps):
    """The batch-2 training step on 2x1x64^3, as `bench_unet train`."""
    baseline = baseline_mib()
    torch.manual_seed(0)
    batch, s = 2, int(os.environ.get("TRAIN_PATCH", "64"))
    model = UNet().to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, s, s, s, device=DEVICE)
    y = (torch.rand(batch, s, s, s, device=DEVICE) >= 0.8).to(torch.uint8)

    def step():
        opt.zero_grad(set_to_none=True)
        dice_loss(model(x), y).backward()
        opt.step()

    wall, cpu = median_ms(reps, 2, step)
    print(f"torch train step [{batch},1,{s},{s},{s}] (fwd+Dice+bwd+Adam): "
          f"{wall:7.1f} ms (cpu {cpu:7.1f} ms)")
    result("train", wall, cpu, batch * s ** 3, reps, 0, baseline)


def ct_like(d, h, w):
    """The CT-like [1, 1, d, h, w] volume of bench_unet.rs `ct_like` (same formula)."""
    z = torch.arange(d, dtype=torch.float32).view(d, 1, 1)
    y = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    x = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    body = ((x - 0.5 * w) / (0.42 * w)) ** 2 + ((y - 0.5 * h) / (0.36 * h)) ** 2
    organ = (((x - 0.58 * w) / (0.12 * w)) ** 2 + ((y - 0.47 * h) / (0.10 * h)) ** 2
             + ((z - 0.5 * d) / (0.2 * d)) ** 2)
    spine = ((x - 0.5 * w) / (0.04 * w)) ** 2 + ((y - 0.74 * h) / (0.04 * w)) ** 2
    v = torch.zeros(d, h, w)
    v = torch.where(body < 1, torch.tensor(0.45), v)
    v = torch.where(organ < 1, torch.tensor(0.55), v)
    v = torch.where(spine < 1, torch.tensor(0.9), v)
    v = v + 0.02 * torch.sin(0.7 * x + 1.3 * y + 0.9 * z)
    return v.view(1, 1, d, h, w).contiguous()


def sliding(d, h, w, reps):
    """MONAI sliding_window_inference with the same settings as segtune's evaluator: 96^3
    windows, overlap 0.25, Gaussian blending (sigma = window/8), 2 windows per forward,
    softmax per window, then argmax."""
    from monai.inferers import sliding_window_inference

    baseline = baseline_mib()
    torch.manual_seed(0)
    model = UNet().eval().to(DEVICE)
    image = ct_like(d, h, w).to(DEVICE)

    def predictor(x):
        return torch.softmax(model(x), 1)

    windows = 1
    for n in (d, h, w):
        windows *= len(window_starts(n, 96, 0.25))
    fg = 0

    def run():
        nonlocal fg
        with torch.no_grad():
            probs = sliding_window_inference(image, (96, 96, 96), 2, predictor, overlap=0.25,
                                             mode="gaussian", sigma_scale=0.125)
            labels = probs.argmax(1).to(torch.uint8)
        fg = int((labels == 1).sum())

    with torch.no_grad():  # warm-up: one forward of a window pair (oneDNN primitives, caches)
        predictor(torch.zeros(2, 1, 96, 96, 96, device=DEVICE))
    wall, cpu = median_ms(reps, 0, run)
    print(f"torch+MONAI sliding window {d}x{h}x{w}, {windows} windows of 96^3: "
          f"{wall:7.1f} ms (cpu {cpu:7.1f} ms) ({fg} voxels labelled 1)")
    result("sliding", wall, cpu, d * h * w, reps, windows, baseline)


def window_starts(n, w, overlap):
    """Window starts along one axis, as segmodel::infer::window_starts (MONAI's grid)."""
    if n <= w:
        return [0]
    step = max(1, int(w * (1 - overlap) + 0.5))  # Rust rounds half away from zero
    starts = list(range(0, n - w, step))
    return starts + [n - w]


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what == "sliding":
        d, h, w = (int(v) for v in sys.argv[2].split("x"))
        reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
        print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}, reps: {reps}")
        sliding(d, h, w, reps)
        sys.exit(0)
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}, reps: {reps}")
    if what == "train":
        train(reps)
    if what in ("conv", "all"):
        conv(1, reps)
        conv(2, reps)
    if what in ("unet", "all"):
        unet(1, reps)
        unet(2, reps)
