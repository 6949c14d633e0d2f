"""Optuna's side of scripts/bench-searchers (see there) and the table.

Usage: python bench_searchers.py DIR [--samplers tpe,cmaes,random]

DIR holds objectives.json and segtune.json, written by segtune's
`cargo run --release -p search --example bench_searchers -- --out DIR`. Runs Optuna's
samplers on the same objective definitions with the same protocol (jobs, jobs in flight, a
random one finishing next, Gaussian noise), writes DIR/optuna.json and prints one markdown
table: per searcher and objective/noise the median (IQR) noise-free value of the final
incumbent over the seeds, and the ask+tell thread CPU time p50/p99.
"""
import argparse
import json
import math
import os
import random
import statistics
import sys
import time
import warnings


def value(obj, u):
    """The objective's noise-free value: the formulas of the Rust side, from the JSON."""
    k = len(u)
    kind = obj["kind"]
    if kind == "quadratic":
        return 1.0 - sum((a - b) ** 2 for a, b in zip(u, obj["center"])) / k
    if kind == "ellipsoid":
        d = [a - b for a, b in zip(u, obj["center"])]
        s = 0.0
        for row, lam in zip(obj["rotation"], obj["scales"]):
            z = sum(a * b for a, b in zip(row, d))
            s += lam * z * z
        return 1.0 - s / k
    if kind == "bumps":
        top = 0.0
        for c, h, w in zip(obj["centers"], obj["heights"], obj["widths"]):
            d2 = sum((a - b) ** 2 for a, b in zip(u, c))
            top = max(top, h * math.exp(-d2 / (2.0 * w * w)))
        return obj["base"] + top
    if kind == "plateau":
        d2 = sum((a - b) ** 2 for a, b in zip(u, obj["center"]))
        inside = max(0.0, 1.0 - d2 / (obj["radius"] ** 2))
        return obj["base"] + obj["tilt"] * (1.0 - d2 / k) + obj["height"] * inside * inside
    raise ValueError(f"unknown objective kind {kind}")


def check_probes(objectives):
    worst = 0.0
    for obj in objectives:
        for p in obj["probes"]:
            worst = max(worst, abs(value(obj, p["u"]) - p["value"]))
    if worst > 1e-12:
        sys.exit(f"bench_searchers.py: the objectives disagree with segtune's by {worst:.3g}")


def make_sampler(name, seed):
    import optuna

    if name == "tpe":
        # Optuna 5's defaults (multivariate on one objective), the constant liar spelled out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name}")


def run(sampler_name, obj, noise, seed, jobs, parallel, dims):
    import optuna
    from optuna.distributions import FloatDistribution

    dists = {f"x{i}": FloatDistribution(0.0, 1.0) for i in range(dims)}
    names = list(dists)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler_name, seed))
    salt = round(noise * 1000)
    noise_rng = random.Random(f"noise {seed} {salt}")
    order = random.Random(f"order {seed} {salt}")
    out = [study.ask(dists) for _ in range(min(parallel, jobs))]
    issued = len(out)
    times = []
    for _ in range(jobs):
        trial = out.pop(order.randrange(len(out)))
        u = [trial.params[n] for n in names]
        reward = value(obj, u) + noise * noise_rng.gauss(0.0, 1.0)
        t0 = time.thread_time_ns()
        study.tell(trial, reward)
        if issued < jobs:
            out.append(study.ask(dists))
            issued += 1
            times.append((time.thread_time_ns() - t0) / 1e3)
    best = study.best_trial
    return value(obj, [best.params[n] for n in names]), times


def pct(xs, q):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * q)]


def summary(values):
    if len(values) < 2:
        return values[0], 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q3 - q1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--samplers", default="tpe,cmaes,random")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with open(os.path.join(args.dir, "objectives.json")) as f:
        spec = json.load(f)
    with open(os.path.join(args.dir, "segtune.json")) as f:
        ours = json.load(f)
    check_probes(spec["objectives"])
    jobs, parallel, dims = spec["jobs"], spec["parallel"], spec["dims"]

    runs = list(ours["runs"])
    timings = {k: v for k, v in ours["timings"].items()}
    for name in [s for s in args.samplers.split(",") if s]:
        started = time.time()
        label = f"optuna {name}"
        times = []
        for obj in spec["objectives"]:
            for noise in spec["noises"]:
                v, t = run(name, obj, noise, obj["seed"], jobs, parallel, dims)
                times += t
                runs.append(
                    {"searcher": label, "objective": obj["name"], "noise": noise,
                     "seed": obj["seed"], "value": v}
                )
        timings[label] = {"ask_tell_us": [pct(times, 0.5), pct(times, 0.99)]}
        print(
            f"{label}: {time.time() - started:.0f}s; ask+tell p50 {pct(times, 0.5):.0f} µs, "
            f"p99 {pct(times, 0.99):.0f} µs",
            file=sys.stderr,
        )
    with open(os.path.join(args.dir, "optuna.json"), "w") as f:
        json.dump({"runs": [r for r in runs if r["searcher"].startswith("optuna")],
                   "timings": {k: v for k, v in timings.items() if k.startswith("optuna")}}, f)

    objectives = list(dict.fromkeys(o["name"] for o in spec["objectives"]))
    noises = spec["noises"]
    searchers = list(dict.fromkeys(r["searcher"] for r in runs))
    cells = {}
    for s in searchers:
        for o in objectives:
            for n in noises:
                vals = [r["value"] for r in runs
                        if r["searcher"] == s and r["objective"] == o and r["noise"] == n]
                cells[s, o, n] = summary(vals)
    best = {(o, n): max(cells[s, o, n][0] for s in searchers) for o in objectives for n in noises}

    header = ["searcher"] + [f"{o} {n}" for o in objectives for n in noises]
    header += ["ask+tell p50 / p99 µs", "+ save p50 / p99 µs"]
    print(f"{spec['seeds']} seeds, {jobs} jobs, {parallel} in flight, K = {dims}: median (IQR) "
          "of the noise-free value of the final incumbent; thread CPU time per finished job.\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for s in searchers:
        row = [f"`{s}`"]
        for o in objectives:
            for n in noises:
                m, iqr = cells[s, o, n]
                text = f"{m:.4f} ({iqr:.4f})"
                row.append(f"**{text}**" if m == best[o, n] else text)
        t = timings[s]
        row.append(f"{t['ask_tell_us'][0]:.0f} / {t['ask_tell_us'][1]:.0f}")
        w = t.get("with_save_us")
        row.append(f"{w[0]:.0f} / {w[1]:.0f}" if w else "—")
        print("| " + " | ".join(row) + " |")

    # Gaps to the reference implementations and to the best Optuna sampler.
    print()
    for ours_name, theirs in [("tpe", "optuna tpe"), ("cmaes", "optuna cmaes")]:
        if ours_name in timings and theirs in timings:
            gaps = [cells[ours_name, o, n][0] - cells[theirs, o, n][0]
                    for o in objectives for n in noises]
            ratio = timings[theirs]["ask_tell_us"][0] / timings[ours_name]["ask_tell_us"][0]
            print(f"- `{ours_name}` − `{theirs}` medians: "
                  + ", ".join(f"{g:+.4f}" for g in gaps)
                  + f" (worst {min(gaps):+.4f}); ask+tell p50 {ratio:.0f}× faster")
    optuna_names = [s for s in searchers if s.startswith("optuna")]
    if "ppo-rnn" in searchers and optuna_names and 0.03 in noises:
        wins = []
        for o in objectives:
            top = max(cells[s, o, 0.03][0] for s in optuna_names)
            wins.append(f"{o} {cells['ppo-rnn', o, 0.03][0] - top:+.4f}")
        print("- `ppo-rnn` − best Optuna median at noise 0.03: " + ", ".join(wins))


if __name__ == "__main__":
    main()
