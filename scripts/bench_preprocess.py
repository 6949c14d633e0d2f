"""Side-by-side benchmark driver for scripts/bench-preprocess (see there)."""
import json, os, statistics, subprocess, sys, tempfile, time

import numpy as np
import SimpleITK as sitk

REPEATS = 5
BIN = os.environ.get("SEGTUNE_PREPROCESS_ONE") or os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(os.path.dirname(__file__), "..", "target"), "release", "preprocess-one")


def make_volumes(tmp):
    rng = np.random.default_rng(0)
    out = {"ct": make_ct(tmp, rng)}
    # MR-like: float32 with a bias field.
    z, y, x = np.mgrid[0:130, 0:320, 0:320].astype(np.float32)
    head = ((x - 160) / 140) ** 2 + ((y - 160) / 150) ** 2 + ((z - 65) / 60) ** 2 < 1
    struct = ((x - 170) / 30) ** 2 + ((y - 150) / 25) ** 2 + ((z - 60) / 20) ** 2 < 1
    mr = np.zeros(x.shape, np.float32)
    mr[head] = 300
    mr[struct] = 600
    mr *= 1 + 0.3 * np.sin(x / 80) * np.cos(y / 90)
    mr += np.abs(rng.normal(0, 20, mr.shape)).astype(np.float32)
    out["mr"] = write_pair(tmp, "mr", mr, struct.astype(np.uint8), (1.25, 1.25, 1.37))
    return out


def make_ct(tmp, rng=None):
    """The CT-like 512x512x120 int16 volume at 0.7x0.7x2.5 mm (air, a body ellipse of soft
    tissue, an organ, bone; HU with noise) and its organ label, as `.nii.gz` in `tmp`:
    [image path, label path, image bytes, decoded bytes]."""
    rng = np.random.default_rng(0) if rng is None else rng
    z, y, x = np.mgrid[0:120, 0:512, 0:512].astype(np.float32)
    body = ((x - 256) / 220) ** 2 + ((y - 256) / 180) ** 2 < 1
    organ = ((x - 300) / 60) ** 2 + ((y - 240) / 50) ** 2 + ((z - 60) / 25) ** 2 < 1
    bone = ((x - 256) / 20) ** 2 + ((y - 380) / 20) ** 2 < 1
    ct = np.full(x.shape, -1000, np.float32)
    ct[body] = 40
    ct[organ] = 100
    ct[bone] = 700
    ct += rng.normal(0, 15, ct.shape).astype(np.float32)
    lab = organ.astype(np.uint8)
    return write_pair(tmp, "ct", ct.astype(np.int16), lab, (0.7, 0.7, 2.5))


def write_pair(tmp, name, img, lab, spacing):
    paths = []
    for kind, arr in (("image", img), ("label", lab)):
        im = sitk.GetImageFromArray(arr)  # numpy [z, y, x]
        im.SetSpacing(spacing)
        im.SetOrigin((-100.0, 20.0, 5.0))
        p = os.path.join(tmp, f"{name}_{kind}.nii.gz")
        sitk.WriteImage(im, p, useCompression=True)
        paths.append(p)
    return paths + [img.nbytes, img.size * 4 + lab.size]


def sitk_once(img_path, lab_path, out_dir, modality):
    t0 = time.perf_counter()
    img = sitk.ReadImage(img_path, sitk.sitkFloat32)
    lab = sitk.ReadImage(lab_path)
    sp_in = img.GetSpacing()
    size = [max(1, int(round(n * s / 1.0))) for n, s in zip(img.GetSize(), sp_in)]

    def grid(im, interp, default):
        return sitk.Resample(im, size, sitk.Transform(), interp, im.GetOrigin(), (1.0, 1.0, 1.0),
                             im.GetDirection(), default, im.GetPixelID())

    r_img = grid(img, sitk.sitkLinear, 0.0)
    r_lab = grid(lab, sitk.sitkNearestNeighbor, 0)
    a = sitk.GetArrayViewFromImage(r_img)
    if modality == "ct":
        lo, hi = -1000.0, 1000.0
    else:
        lo, hi = np.percentile(sitk.GetArrayViewFromImage(img), [5, 95])
    n = sitk.GetImageFromArray(np.clip((a - lo) / (hi - lo), 0, 1).astype(np.float32))
    n.CopyInformation(r_img)
    sitk.WriteImage(n, os.path.join(out_dir, "image.nii"))
    sitk.WriteImage(r_lab, os.path.join(out_dir, "label.nii"))
    return time.perf_counter() - t0


SITK_CHILD = r"""
import sys, json, resource
sys.path.insert(0, sys.argv[1])
import bench_preprocess as b
n = int(sys.argv[6])
r0 = resource.getrusage(resource.RUSAGE_SELF)
ts = [b.sitk_once(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]) for _ in range(n)]
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / n
print(json.dumps({"times": ts, "cpu_s": cpu, "peak_rss_kb": r1.ru_maxrss}))
"""


def run_sitk(img, lab, out, modality):
    r = subprocess.run([sys.executable, "-c", SITK_CHILD, os.path.dirname(os.path.abspath(__file__)),
                        img, lab, out, modality, str(REPEATS)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"SimpleITK run failed:\n{r.stderr}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return d["times"], d["peak_rss_kb"], d["cpu_s"]


def run_segtune(img, lab, out, modality, level=None, binary=None, mode=None):
    env = dict(os.environ)
    if level is not None:
        env["SEGTUNE_SIMD"] = level
    cmd = [binary or BIN, img, lab, out, modality, str(REPEATS)] + ([mode] if mode else [])
    import resource
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / REPEATS
    lines = [json.loads(l) for l in r.stdout.strip().splitlines()]
    return [l["total"] for l in lines[:-1]], lines[-1]["peak_rss_kb"], lines[:-1], cpu


def cpu_line():
    info = open("/proc/cpuinfo").read().splitlines()
    model = next((l.split(":", 1)[1].strip() for l in info if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in info if l.startswith("flags")), [])
    if "avx512f" in flags:
        isa = "AVX-512 (" + "/".join(f[6:] for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd") if f in flags) + ")"
    elif "avx2" in flags and "fma" in flags:
        isa = "AVX2+FMA"
    else:
        isa = "SSE2 baseline"
    return f"machine: {model}, {os.cpu_count()} cores, {isa}"


def main():
    global REPEATS
    import argparse
    ap = argparse.ArgumentParser(prog="bench-preprocess")
    ap.add_argument("repeats", nargs="?", type=int, default=5)
    ap.add_argument("--simd", default="auto", help="comma-separated SEGTUNE_SIMD levels to run segtune at")
    ap.add_argument("--baseline", help="also run this preprocess-one binary (an earlier build)")
    ap.add_argument("--in-memory", action="store_true",
                    help="also run segtune encoding into memory first, as the preprocessor once did")
    ap.add_argument("--store", action="store_true",
                    help="also run segtune streaming into a file store, as the preprocessor does")
    a = ap.parse_args()
    REPEATS = a.repeats
    levels = a.simd.split(",")
    for l in levels:
        if l not in ("auto", "avx512", "avx2", "generic"):
            sys.exit(f"bench-preprocess: --simd wants auto, avx512, avx2 or generic, got {l}")
    threads = os.environ.get("RAYON_NUM_THREADS", str(os.cpu_count()))
    print(cpu_line())
    print(f"SIMD: segtune the level in each row (SEGTUNE_SIMD); SimpleITK {sitk.Version.VersionString()} "
          f"(ITK {sitk.Version.ITKVersionString()}) reports none: its wheel's build decides")
    print(f"threads: segtune RAYON_NUM_THREADS={threads}, SimpleITK default ({sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}); repeats {REPEATS}")
    print("decoded = the image as float32 plus the label as uint8 (what both tools hold after reading);")
    print("CPU s = user + system CPU per repeat; vs SimpleITK = wall ratio / CPU ratio; load: " + open("/proc/loadavg").read().strip())
    with tempfile.TemporaryDirectory() as tmp:
        vols = make_volumes(tmp)
        print(f"{'volume':6} {'tool':22} {'SIMD':12} {'median s':>9} {'CPU s':>7} {'peak RSS MB':>12} {'decoded MB':>11} {'RSS/decoded':>12} {'vs SimpleITK':>18}")
        for modality, (img, lab, nbytes, decoded) in vols.items():
            out = os.path.join(tmp, "out_" + modality)
            os.makedirs(out, exist_ok=True)
            kt, krss, kcpu = run_sitk(img, lab, out, modality)
            mk = statistics.median(kt)
            rows = [("SimpleITK", "-", mk, krss, kcpu, None)]
            runs = [(f"segtune", l, None, None) for l in levels]
            if a.in_memory:
                runs += [(f"segtune --in-memory", l, "--in-memory", None) for l in levels]
            if a.store:
                runs += [(f"segtune --store", l, "--store", None) for l in levels]
            if a.baseline:
                runs.append(("segtune (baseline)", None, None, a.baseline))
            for tool, level, mode, binary in runs:
                st, srss, phases, scpu = run_segtune(img, lab, out, modality, level, binary, mode)
                used = phases[0].get("simd", "pre-dispatch")
                rows.append((tool, used, statistics.median(st), srss, scpu, phases))
            for tool, used, m, rss, cpu, phases in rows:
                ratio = "" if phases is None else f"{m / mk:.2f} / {cpu / kcpu:.2f}"
                print(f"{modality:6} {tool:22} {used:12} {m:9.3f} {cpu:7.3f} {rss / 1024:12.0f} {decoded / 2**20:11.0f} "
                      f"{rss / 1024 / (decoded / 2**20):12.2f} {ratio:>18}")
                if phases is not None:
                    ph = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in ("read", "process", "write")}
                    print(f"{'':6}   phases: read {ph['read']:.3f} s, resample+normalize+encode {ph['process']:.3f} s, write {ph['write']:.3f} s")
        print(f"(input as stored: CT int16 {vols['ct'][2] / 2**20:.0f} MB, MR float32 {vols['mr'][2] / 2**20:.0f} MB); "
              f"load after: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
