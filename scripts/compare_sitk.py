"""Checks segtune's preprocessing against SimpleITK on generated volumes.

For each synthetic task (CT-like and MR-like, anisotropic, some headers flipped) it runs
`segtune data synth` and `segtune data preprocess`, then redoes every case with SimpleITK:
`sitk.Resample` onto the same grid (input origin and direction, 1 mm spacing, size
round(n*s/1)), linear for images and nearest for labels, and the same normalization (CT
[-1000, 1000] HU; MR 5th..95th percentile over the voxels of all training images as
stored, numpy's linear percentile). Compares on interior voxels, i.e. output voxels whose
continuous input index lies inside [0, n-1] on every axis (SimpleITK gives 0 past the last
voxel centre + half a voxel; segtune clamps to the edge value there, by design).

Passes when max |difference| <= 1e-3 in normalized intensity and label agreement >= 99.5%.
Usage: python3 scripts/compare_sitk.py SEGTUNE_BINARY
"""
import json, os, subprocess, sys, tempfile

import numpy as np
import SimpleITK as sitk

BIN = sys.argv[1]


def run(*args):
    r = subprocess.run([BIN, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stderr}")
    return r.stdout.strip().splitlines()[-1]


def sitk_case(img_path, lab_path, window):
    img = sitk.ReadImage(img_path, sitk.sitkFloat32)
    lab = sitk.ReadImage(lab_path, sitk.sitkUInt8)
    size = [max(1, int(round(n * s))) for n, s in zip(img.GetSize(), img.GetSpacing())]
    def grid(im, interp):
        return sitk.Resample(im, size, sitk.Transform(), interp, im.GetOrigin(), (1.0,) * 3,
                             im.GetDirection(), 0, im.GetPixelID())
    a = sitk.GetArrayFromImage(grid(img, sitk.sitkLinear)).astype(np.float64)
    lo, hi = window
    a = np.clip((a - lo) / (hi - lo), 0, 1)
    l = sitk.GetArrayFromImage(grid(lab, sitk.sitkNearestNeighbor))
    # Interior mask, numpy order [z, y, x].
    masks = []
    for axis, (n, s) in enumerate(zip(img.GetSize(), img.GetSpacing())):
        idx = np.arange(size[axis]) * 1.0 / s
        masks.append(idx <= n - 1 + 1e-9)
    interior = masks[2][:, None, None] & masks[1][None, :, None] & masks[0][None, None, :]
    return a, l, interior


def check(kind, tmp):
    task = os.path.join(tmp, kind)
    store = os.path.join(tmp, "store")
    run("data", "synth", "--kind", kind, "--cases", "6", "--size", "64", "--seed", "4", "--out", task)
    ds_id = run("data", "preprocess", task, "--store", store)
    meta = json.load(open(os.path.join(task, "dataset.json")))
    val = {v["image"] for v in meta.get("validation", [])}
    pairs = [(os.path.join(task, p["image"]), os.path.join(task, p["label"]), p["image"] in val)
             for p in meta["training"]]
    if kind == "ct-organ":
        window = (-1000.0, 1000.0)
    else:
        train = np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(i, sitk.sitkFloat32)).ravel()
                                for i, _, v in pairs if not v])
        window = tuple(np.percentile(train.astype(np.float64), [5, 95]))
    worst, agree_min = 0.0, 1.0
    for img, lab, _ in pairs:
        case = os.path.basename(img).split(".nii")[0]
        out = os.path.join(store, "datasets", ds_id, "cases", case)
        ours = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "image.nii"))).astype(np.float64)
        our_lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "label.nii")))
        ref, ref_lab, interior = sitk_case(img, lab, window)
        assert ours.shape == ref.shape, f"{case}: shape {ours.shape} vs SimpleITK {ref.shape}"
        diff = np.abs(ours - ref)[interior].max()
        agree = (our_lab == ref_lab)[interior].mean()
        worst, agree_min = max(worst, diff), min(agree_min, agree)
        print(f"{kind:13} {case:16} shape {ours.shape} max|diff| {diff:.2e} label agreement {agree * 100:.3f}%")
    ok = worst <= 1e-3 and agree_min >= 0.995
    print(f"{kind}: worst max|diff| {worst:.2e}, lowest label agreement {agree_min * 100:.3f}% -> {'PASS' if ok else 'FAIL'}")
    return ok


with tempfile.TemporaryDirectory() as tmp:
    results = [check(k, tmp) for k in ("ct-organ", "mr-structure")]
sys.exit(0 if all(results) else 1)
