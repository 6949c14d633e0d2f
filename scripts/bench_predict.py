"""Driver of scripts/bench-predict (see there): `segtune predict` end to end against MONAI.

    bench_predict.py run SEGTUNE_BIN BUNDLE_DIR [--reps N] [--threads N] [--input CT]
    bench_predict.py monai BUNDLE_DIR INPUT OUT_DIR      (one MONAI prediction; the child)

`run` writes the 512x512x120 CT of scripts/bench-preprocess (unless --input), then per
repetition runs each side in its own process (MONAI first, then segtune), measuring its wall
time, CPU time and peak RSS from the parent (os.wait4: the child's own rusage), compares the
two masks and prints the table.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TORCH_REFERENCE = os.path.join(ROOT, "shared", "segmodel", "benches")


# --- the bundle's weights in torch ---------------------------------------------------------

def read_safetensors(path):
    """{name: float32 array} from a safetensors file (the format is an 8-byte little-endian
    header length, a JSON header of dtype/shape/data_offsets, then the raw data)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            sys.exit(f"bench-predict: {path}: tensor {name} is {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw, np.float32, (b - a) // 4, base + a).reshape(t["shape"])
    return out


def torch_unet(bundle_dir, manifest):
    """segmodel's U-Net of the bundle re-expressed in torch (the twin in
    shared/segmodel/benches/torch_reference.py, same parameter names and layouts), with its
    weights, for arrays in MONAI's axis order.

    segtune's tensors are [B, C, z, y, x]; MONAI (NibabelReader + EnsureChannelFirst) hands
    the network [B, C, x, y, z]. Reversing the spatial axes of every kernel makes the same
    network on the transposed array (cross-correlation, max-pooling and instance norm commute
    with the transposition), so no voxel is copied per window."""
    import torch

    sys.path.insert(0, TORCH_REFERENCE)
    from torch_reference import UNet

    net = manifest["network"]
    model = UNet(net["in_channels"], net["num_classes"], tuple(net["channels"]))
    weights = read_safetensors(os.path.join(bundle_dir, "model.safetensors"))
    state = model.state_dict()
    missing = sorted(set(state) - set(weights))
    if missing:
        sys.exit(f"bench-predict: {bundle_dir}/model.safetensors lacks {', '.join(missing)}")
    loaded = {}
    for name, ref in state.items():
        w = torch.from_numpy(weights[name].copy())
        if tuple(w.shape) != tuple(ref.shape):
            sys.exit(f"bench-predict: {name} has shape {tuple(w.shape)}, the torch twin wants {tuple(ref.shape)}")
        if w.dim() == 5:
            w = w.permute(0, 1, 4, 3, 2).contiguous()
        loaded[name] = w
    model.load_state_dict(loaded)
    return model.eval()


# --- the MONAI side (child process) --------------------------------------------------------

def monai_predict(bundle_dir, input_path, out_dir):
    t0 = time.perf_counter()
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (AsDiscreted, Compose, EnsureChannelFirstd, Invertd,
                                  LoadImaged, SaveImaged, ScaleIntensityRanged, Spacingd)
    threads = int(os.environ.get("THREADS", "2"))
    torch.set_num_threads(threads)
    t_import = time.perf_counter() - t0

    manifest = json.load(open(os.path.join(bundle_dir, "bundle.json")))
    prep = manifest["preprocessing"]
    if len(prep["channels"]) != 1 or prep["channels"][0]["window"]["kind"] != "fixed":
        sys.exit("bench-predict: the MONAI side handles one channel with a fixed (CT) window")
    window = prep["channels"][0]["window"]
    net = manifest["network"]
    model = torch_unet(bundle_dir, manifest)

    pre = Compose([
        LoadImaged(keys="image", reader="NibabelReader"),
        EnsureChannelFirstd(keys="image"),
        # (x, y, z) mm: the array's axis order with NibabelReader, as the bundle's.
        Spacingd(keys="image", pixdim=prep["target_spacing"], mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=window["low"], a_max=window["high"],
                             b_min=0.0, b_max=1.0, clip=True),
    ])
    post = Compose([
        # Back onto the source grid, linear on the probabilities.
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False,
                to_tensor=True),
        AsDiscreted(keys="pred", argmax=True),
        SaveImaged(keys="pred", output_dir=out_dir, output_postfix="", output_ext=".nii.gz",
                   output_dtype=np.uint8, resample=False, separate_folder=False,
                   print_log=False),
    ])

    def predictor(x):
        return torch.softmax(model(x), 1)

    t1 = time.perf_counter()
    data = pre({"image": input_path})
    t2 = time.perf_counter()
    with torch.no_grad():
        probs = sliding_window_inference(data["image"].unsqueeze(0), tuple(net["patch"]), 2,
                                         predictor, overlap=net["overlap"], mode="gaussian",
                                         sigma_scale=0.125)
    data["pred"] = probs[0]
    del probs
    t3 = time.perf_counter()
    post(data)
    t4 = time.perf_counter()
    model_grid = "x".join(str(s) for s in data["image"].shape[1:])
    print("RESULT " + json.dumps({
        "import_s": t_import, "load_s": t2 - t1, "sliding_s": t3 - t2, "back_and_write_s": t4 - t3,
        "pipeline_s": t4 - t1, "model_grid": model_grid, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "monai": __import__("monai").__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }), flush=True)


# --- the parent ----------------------------------------------------------------------------

def measure(cmd, env, log_path):
    """Runs `cmd` in its own process; (wall s, CPU s, peak RSS MiB, output)."""
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    out = open(log_path).read()
    if p.returncode != 0:
        sys.exit(f"bench-predict: {' '.join(cmd)} exited {p.returncode}:\n{out[-3000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, out


def compare(a_path, b_path, classes):
    import nibabel as nib
    a = np.asarray(nib.load(a_path).dataobj)
    b = np.asarray(nib.load(b_path).dataobj)
    if a.shape != b.shape:
        sys.exit(f"bench-predict: mask shapes differ: {a_path} {a.shape}, {b_path} {b.shape}")
    equal = float((a == b).mean())
    same = np.flatnonzero((a == b).all(axis=(0, 1)))
    # Runs of wholly equal z slices, "0-26, 30".
    runs = []
    for z in same:
        if runs and runs[-1][1] == z - 1:
            runs[-1][1] = z
        else:
            runs.append([z, z])
    slices = f"{len(same)} of {a.shape[2]} z slices wholly equal" + (
        " (" + ", ".join(f"{r[0]}" if r[0] == r[1] else f"{r[0]}-{r[1]}" for r in runs) + ")" if runs else "")
    per_class = []
    for k in range(1, classes):
        ca, cb = int((a == k).sum()), int((b == k).sum())
        both = int(((a == k) & (b == k)).sum())
        dice = 2 * both / (ca + cb) if ca + cb else 1.0
        per_class.append((k, ca, cb, dice))
    return a.shape, equal, slices, per_class


def write_small_ct(tmp):
    """A 96x96x40 CT of the same kind (0.7x0.7x2.5 mm, int16) for --check."""
    import SimpleITK as sitk
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:40, 0:96, 0:96].astype(np.float32)
    body = ((x - 48) / 40) ** 2 + ((y - 48) / 34) ** 2 < 1
    organ = ((x - 56) / 14) ** 2 + ((y - 44) / 12) ** 2 + ((z - 20) / 8) ** 2 < 1
    ct = np.full(x.shape, -1000, np.float32)
    ct[body] = 40
    ct[organ] = 100
    ct += rng.normal(0, 15, ct.shape).astype(np.float32)
    im = sitk.GetImageFromArray(ct.astype(np.int16))
    im.SetSpacing((0.7, 0.7, 2.5))
    im.SetOrigin((-100.0, 20.0, 5.0))
    path = os.path.join(tmp, "small.nii.gz")
    sitk.WriteImage(im, path, useCompression=True)
    return path


def without_postprocessing(bundle, tmp):
    """A copy of `bundle` whose post-processing keeps every component (MONAI's pipeline has
    none), for --check."""
    import shutil
    out = os.path.join(tmp, "bundle-no-postprocessing")
    shutil.copytree(bundle, out)
    path = os.path.join(out, "bundle.json")
    m = json.load(open(path))
    m["postprocessing"]["min_component_mm3"] = [0.0] * len(m["postprocessing"]["min_component_mm3"])
    json.dump(m, open(path, "w"), indent=2)
    return out


def cpu_line():
    info = open("/proc/cpuinfo").read().splitlines()
    model = next((l.split(":", 1)[1].strip() for l in info if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in info if l.startswith("flags")), [])
    isa = "AVX-512" if "avx512f" in flags else ("AVX2+FMA" if "avx2" in flags else "SSE2")
    return f"{model}, {os.cpu_count()} cores, {isa}"


def load():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def run(a):
    manifest = json.load(open(os.path.join(a.bundle, "bundle.json")))
    net, prep = manifest["network"], manifest["preprocessing"]
    classes = net["num_classes"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), THREADS=str(a.threads),
               OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    # libgomp's default (spin, then sleep) made torch's 2-thread forward of the demo network
    # 7x slower on this shared 2-core machine (1.26 s against 0.17 s per 2x32^3 forward at
    # load 6); passive waiting is the fair setting for PyTorch on a loaded host.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        if a.check:
            ct = write_small_ct(tmp)
            a.bundle = without_postprocessing(a.bundle, tmp)
            manifest = json.load(open(os.path.join(a.bundle, "bundle.json")))
        elif a.input:
            ct = os.path.abspath(a.input)
        else:
            sys.path.insert(0, HERE)
            from bench_preprocess import make_ct
            print("== writing the 512x512x120 CT (0.7x0.7x2.5 mm, int16 .nii.gz)", flush=True)
            ct = make_ct(tmp)[0]
        load_before = load()
        rows = {"MONAI": [], "segtune": []}
        for rep in range(a.reps):
            for side in ("MONAI", "segtune"):
                out = os.path.join(tmp, f"{side}-{rep}")
                os.makedirs(out)
                if side == "MONAI":
                    cmd = [sys.executable, os.path.abspath(__file__), "monai", a.bundle, ct, out]
                else:
                    cmd = [a.segtune, "predict", "--no-tta", "--model", a.bundle, "--input", ct, "--output", out]
                l0 = load().split()[0]
                print(f"== {side} (run {rep + 1}/{a.reps}, load {l0})", flush=True)
                wall, cpu, rss, text = measure(cmd, env, os.path.join(tmp, f"{side}-{rep}.log"))
                masks = sorted(glob.glob(os.path.join(out, "*.nii.gz")))
                if len(masks) != 1:
                    sys.exit(f"bench-predict: {side} wrote {masks or 'no mask'} in {out}:\n{text[-3000:]}")
                detail = {}
                for line in text.splitlines():
                    if line.startswith("RESULT "):
                        detail = json.loads(line[7:])
                    elif side == "segtune" and "model grid" in line:
                        detail["line"] = line.strip()
                print(f"   {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {rss:.0f} MiB  {detail.get('line', '')}", flush=True)
                rows[side].append({"wall": wall, "cpu": cpu, "rss": rss, "load": float(l0),
                                   "mask": masks[0], "detail": detail})
        load_after = load()

        m0 = rows["MONAI"][0]["detail"]
        shape, equal, slices, per_class = compare(rows["segtune"][-1]["mask"], rows["MONAI"][-1]["mask"], classes)
        med = {s: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "rss")}
               for s, rs in rows.items()}
        pipe = statistics.median(r["detail"]["pipeline_s"] for r in rows["MONAI"])
        imp = statistics.median(r["detail"]["import_s"] for r in rows["MONAI"])

        print()
        print(f"segtune {commit} predict vs MONAI {m0['monai']} + PyTorch {m0['torch']} "
              f"({m0['cpu_capability']}), {a.threads} threads each, f32, CPU; "
              f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
        print(f"machine: {cpu_line()}; load average (1/5/15 min) before {load_before}, after {load_after}")
        print(f"input: {os.path.basename(ct)} {shape[0]}x{shape[1]}x{shape[2]} (x, y, z); model: channels "
              f"{net['channels']}, {classes} classes, patch {net['patch']}, overlap {net['overlap']}, "
              f"target spacing {prep['target_spacing']} mm (MONAI's model grid {m0['model_grid']})")
        print()
        head = ["side", "runs", "wall s", "CPU s", "peak RSS MiB", "load", "segtune/MONAI"]
        table = []
        for side in ("MONAI", "segtune"):
            m = med[side]
            ratio = ""
            if side == "segtune":
                mm = med["MONAI"]
                ratio = (f"{m['wall'] / mm['wall']:.2f}x wall, {m['cpu'] / mm['cpu']:.2f}x CPU, "
                         f"{m['rss'] / mm['rss']:.2f}x RSS")
            table.append([side, str(len(rows[side])), f"{m['wall']:.1f}", f"{m['cpu']:.1f}",
                          f"{m['rss']:.0f}", f"{statistics.median(r['load'] for r in rows[side]):.2f}", ratio])
        widths = [max(len(x) for x in col) for col in zip(head, *table)]
        fmt = lambda cells: "| " + " | ".join(c.ljust(w) if i in (0, 6) else c.rjust(w)
                                             for i, (c, w) in enumerate(zip(cells, widths))) + " |"
        print(fmt(head))
        print("|" + "|".join("-" * (w + 2) if i in (0, 6) else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
        for row in table:
            print(fmt(row))
        print()
        phases = {k: statistics.median(r["detail"][k] for r in rows["MONAI"])
                  for k in ("load_s", "sliding_s", "back_and_write_s")}
        print(f"MONAI phases (median): python + torch/monai imports {imp:.1f} s, LoadImage+Spacing+window "
              f"{phases['load_s']:.1f} s, sliding window {phases['sliding_s']:.1f} s, Invertd+argmax+SaveImage "
              f"{phases['back_and_write_s']:.1f} s; without the imports and the model build: {pipe:.1f} s "
              f"(segtune's whole process / that: {med['segtune']['wall'] / pipe:.2f}x)")
        print(f"masks (last run): {100 * equal:.3f} % of voxels equal, {slices}; per class, voxels segtune / MONAI and "
              f"Dice between them: " + "; ".join(f"{k}: {ca} / {cb}, {d:.3f}" for k, ca, cb, d in per_class))
        print("wall = the process from start to exit (segtune: reading the bundle too; MONAI: the "
              "interpreter and imports too); CPU = user + system of the process; peak RSS = its ru_maxrss")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "monai":
        if len(sys.argv) != 5:
            sys.exit("usage: bench_predict.py monai BUNDLE_DIR INPUT OUT_DIR")
        monai_predict(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(prog="bench_predict.py")
    ap.add_argument("cmd", choices=["run"])
    ap.add_argument("segtune")
    ap.add_argument("bundle")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input", help="a CT .nii/.nii.gz instead of the generated one")
    ap.add_argument("--check", action="store_true",
                    help="a 96x96x40 CT and the bundle without post-processing: do both sides agree?")
    a = ap.parse_args()
    if a.reps < 1 or a.threads < 1:
        sys.exit("bench-predict: --reps and --threads want a positive count")
    a.bundle = os.path.abspath(a.bundle)
    run(a)


if __name__ == "__main__":
    main()
