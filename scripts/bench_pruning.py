"""Pruning pays: a TPE search of boosted trees with and without ASHA, over many seeds, beside
Optuna (TPE + its SuccessiveHalvingPruner) tuning LightGBM on the same rows, in one invocation.

    cargo build --release --bin quiver
    pip install optuna lightgbm pyarrow numpy
    python3 scripts/bench_pruning.py [--quiver target/release/quiver] [--rows 100000]
        [--seeds 20] [--trials 32] [--rounds 81] [--parallel 2]

For each seed it runs `quiver tune` twice on the exported classification rows (boosted trees,
`max_iter` rounds as the budget; step size, depth and row subsampling searched; held-out log
loss): once plain TPE, once TPE with `pruner = "asha"` (rungs at 9, 27, 81 rounds; Quiver's
rungs judge extrapolated values unless --no-extrapolate, and demote a trial that later arrivals
push out of the best at a rung it passed unless --no-demote). From
the trial logs it takes the best held-out loss and the trial compute (the sum of the trials'
durations), and it times each command whole. Optuna runs the same number of trials with the
same space, budget and rungs (min_resource 9 unless --min-resource, reduction factor 3 unless
--reduction-factor), each a LightGBM fit
reporting its validation log loss every round, on the same rows with a 20% random hold-out.
Prints the medians over seeds and the ratios (pruned / plain), each side's own.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time


def tune(quiver, spec_path):
    t = time.perf_counter()
    run = subprocess.run([quiver, "tune", spec_path], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if run.returncode != 0:
        raise SystemExit(f"quiver tune failed:\n{run.stdout}\n{run.stderr}")
    return wall


def read_log(path, budget):
    trials = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "id" in row:
                trials.append(row)
    ok = [t["loss"] for t in trials if t["status"] == "ok" and t["loss"] is not None]
    compute = sum(t["finished_ms"] - t["started_ms"] for t in trials) / 1e3
    pruned = sum(1 for t in trials if t["status"] == "pruned")
    # Boosting rounds run: a measure of compute the machine's load does not move.
    rounds = sum(budget if t["status"] == "ok" else
                 max((step for step, _ in t.get("intermediate") or []), default=0)
                 for t in trials)
    return min(ok), compute, pruned, rounds


def spec(data, log, seed, trials, rounds, parallel, pruner, min_resource, kind="asha", eta=3,
         extrapolate=True, demote=True, asynchronous=False):
    lines = [
        "[data]",
        f'dataset = "{data}"',
        'label = "class"',
        'features = ["features"]',
        "[model]",
        'estimator = "gbt_classifier"',
        'metric = "log_loss"',
        "eval_fraction = 0.2",
        "[search]",
        'algo = "tpe"',
        f"max_evals = {trials}",
        f"parallelism = {parallel}",
        f"seed = {seed}",
        f'trial_log = "{log}"',
        f'asynchronous = {"true" if asynchronous else "false"}',
    ]
    if pruner:
        if kind == "median":
            lines.append('pruner = "median"')
        else:
            lines.append(f'pruner = {{ name = "{kind}", min_resource = {min_resource}, '
                         f'reduction_factor = {eta}, '
                         f'extrapolate = {"true" if extrapolate else "false"}, '
                         f'demote = {"true" if demote else "false"} }}')
    lines += [
        "[space]",
        "step_size = { loguniform = [0.01, 0.5] }",
        "max_depth = { randint = [2, 8] }",
        "subsampling_rate = { uniform = [0.5, 1.0] }",
        f"max_iter = {{ choice = [{rounds}] }}",
        "max_bins = { choice = [32] }",
    ]
    return "\n".join(lines) + "\n"


def optuna_search(X, y, seed, trials, rounds, parallel, pruned, min_resource, kind="asha",
                  eta=3):
    import lightgbm as lgb
    import numpy as np
    import optuna

    rng = np.random.default_rng(seed)
    hold = rng.random(len(y)) < 0.2
    binning = {"max_bin": 32, "verbose": -1}
    train = lgb.Dataset(X[~hold], y[~hold], params=binning, free_raw_data=False)
    valid = lgb.Dataset(X[hold], y[hold], reference=train, params=binning, free_raw_data=False)
    # Built once here: parallel trials (threads) then only read them.
    train.construct()
    valid.construct()
    compute = [0.0]

    def objective(trial):
        params = {
            "objective": "binary",
            "metric": "binary_logloss",
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.5, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 8),
            "num_leaves": 2 ** 8,
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
            "bagging_freq": 1,
            "num_threads": 1,
            "verbose": -1,
            "seed": seed,
        }
        started = time.perf_counter()
        last = [None]

        def report(env):
            value = env.evaluation_result_list[0][2]
            last[0] = value
            step = env.iteration + 1
            trial.report(value, step)
            if pruned and trial.should_prune():
                raise optuna.TrialPruned()

        try:
            lgb.train(params, train, num_boost_round=rounds, valid_sets=[valid],
                      callbacks=[report])
        finally:
            compute[0] += time.perf_counter() - started
        return last[0]

    if not pruned:
        pruner = optuna.pruners.NopPruner()
    elif kind == "median":
        pruner = optuna.pruners.MedianPruner()
    elif kind == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=rounds,
                                                reduction_factor=eta)
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource,
                                                        reduction_factor=eta)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    t = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=parallel)
    wall = time.perf_counter() - t
    done = [tr.value for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    n_pruned = sum(1 for tr in study.trials if tr.state == optuna.trial.TrialState.PRUNED)
    run = sum(rounds if tr.state == optuna.trial.TrialState.COMPLETE
              else max(tr.intermediate_values, default=0) for tr in study.trials)
    return min(done), compute[0], n_pruned, wall, run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=81)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--min-resource", type=int, default=9, help="ASHA's first rung (rounds)")
    ap.add_argument("--asha-trials", type=int, default=None,
                    help="trials of the pruned searches (default: --trials): pruning frees "
                         "compute for more of them")
    ap.add_argument("--reduction-factor", type=int, default=3, help="η of ASHA and Hyperband")
    ap.add_argument("--pruner", default="asha", choices=["asha", "hyperband", "median"])
    ap.add_argument("--no-extrapolate", action="store_true",
                    help="Quiver's ASHA / Hyperband judge the values reached (Optuna's rule) "
                         "instead of what each curve extrapolates to")
    ap.add_argument("--no-demote", action="store_true",
                    help="a trial that passed a rung keeps its place when later arrivals there "
                         "are better (Optuna's rule) instead of stopping at its next step")
    ap.add_argument("--asynchronous", action="store_true",
                    help="Quiver's searches start a trial whenever one ends (as Optuna's n_jobs "
                         "do) instead of running batches of --parallel trials")
    ap.add_argument("--work", default=None,
                    help="folder for the data and trial logs (default: a new temporary one); "
                         "with --reuse-plain, plain searches already there are not rerun")
    ap.add_argument("--reuse-plain", action="store_true")
    ap.add_argument("--no-optuna", action="store_true")
    a = ap.parse_args()

    work = a.work or tempfile.mkdtemp()
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, f"rows-{a.rows}.parquet")
    if not os.path.exists(data):
        subprocess.run([a.quiver, "bench", "trees", "--rows", str(a.rows), "--export", data],
                       capture_output=True, text=True, check=True)
    def trials_of(pruned):
        return (a.asha_trials or a.trials) if pruned else a.trials

    rows = {"quiver plain": [], "quiver asha": [], "optuna plain": [], "optuna asha": []}
    for seed in range(a.seeds):
        for pruner in (False, True):
            name = "quiver asha" if pruner else "quiver plain"
            tag = (f"s{seed}-t{trials_of(pruner)}-r{a.rounds}-p{a.parallel}"
                   + ("a-" if a.asynchronous else "-")
                   + (f"{a.pruner}-m{a.min_resource}-e{a.reduction_factor}-"
                      f"x{int(not a.no_extrapolate)}-d{int(not a.no_demote)}"
                      if pruner else "plain"))
            log = os.path.join(work, f"{tag}.jsonl")
            path = os.path.join(work, f"{tag}.toml")
            timing = os.path.join(work, f"{tag}.wall")
            if not pruner and a.reuse_plain and os.path.exists(timing):
                with open(timing) as f:
                    wall = float(f.read())
            else:
                # A fresh search, not a resume of an earlier run's log (and its segments).
                for old in (log, log + ".segments"):
                    if os.path.isdir(old):
                        shutil.rmtree(old)
                    elif os.path.exists(old):
                        os.remove(old)
                with open(path, "w") as f:
                    f.write(spec(data, log, seed, trials_of(pruner), a.rounds, a.parallel,
                                 pruner, a.min_resource, a.pruner, a.reduction_factor,
                                 not a.no_extrapolate, not a.no_demote, a.asynchronous))
                wall = tune(a.quiver, path)
                with open(timing, "w") as f:
                    f.write(str(wall))
            best, compute, n_pruned, run = read_log(log, a.rounds)
            rows[name].append((best, compute, n_pruned, wall, run))
            print(f"seed {seed:2} {name:13} best {best:.5f}  trial compute {compute:7.1f} s  "
                  f"pruned {n_pruned:2}  wall {wall:6.1f} s  rounds {run:5}", flush=True)
    if not a.no_optuna:
        import numpy as np
        import pyarrow.parquet as pq

        table = pq.read_table(data)
        X = np.array(table.column("features").to_pylist(), dtype=np.float64)
        y = np.array(table.column("class").to_pylist(), dtype=np.float64)
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for seed in range(a.seeds):
            for pruned in (False, True):
                name = "optuna asha" if pruned else "optuna plain"
                best, compute, n_pruned, wall, run = optuna_search(
                    X, y, seed, trials_of(pruned), a.rounds, a.parallel, pruned,
                    a.min_resource, a.pruner, a.reduction_factor)
                rows[name].append((best, compute, n_pruned, wall, run))
                print(f"seed {seed:2} {name:13} best {best:.5f}  trial compute {compute:7.1f} s  "
                      f"pruned {n_pruned:2}  wall {wall:6.1f} s  rounds {run:5}", flush=True)

    print(f"\n{a.rows} rows, {a.trials} trials ({trials_of(True)} pruned) of up to {a.rounds} "
          f"rounds, {a.parallel} at a time, {a.seeds} seeds: medians")
    print(f"{'search':14} {'best loss':>10} {'trial compute s':>16} {'pruned':>7} {'wall s':>8} "
          f"{'rounds':>7}")
    med = {}
    for name, r in rows.items():
        if not r:
            continue
        med[name] = [statistics.median(x[i] for x in r) for i in range(5)]
        b, c, p, w, n = med[name]
        print(f"{name:14} {b:10.5f} {c:16.1f} {p:7.1f} {w:8.1f} {n:7.0f}")
    for side in ("quiver", "optuna"):
        if f"{side} plain" in med and f"{side} asha" in med:
            plain, asha = med[f"{side} plain"], med[f"{side} asha"]
            print(f"{side}: asha/plain trial compute {asha[1] / plain[1]:.2f}, wall "
                  f"{asha[3] / plain[3]:.2f}, rounds {asha[4] / plain[4]:.2f}, best loss "
                  f"{asha[0] - plain[0]:+.5f}")
            # Paired by seed: is the difference noise?
            diffs = [x[0] - y[0] for x, y in zip(rows[f"{side} asha"], rows[f"{side} plain"])]
            rng = random.Random(1)
            boot = sorted(statistics.median(rng.choices(diffs, k=len(diffs)))
                          for _ in range(4000))
            print(f"{side}: per seed asha - plain best loss: median {statistics.median(diffs):+.5f}, "
                  f"95% bootstrap interval [{boot[100]:+.5f}, {boot[3899]:+.5f}], asha lower on "
                  f"{sum(d < 0 for d in diffs)} of {len(diffs)} seeds; seed-to-seed sd of plain "
                  f"{statistics.pstdev(x[0] for x in rows[side + ' plain']):.5f}")
    if "quiver asha" in med and "optuna asha" in med:
        print(f"wall, optuna asha / quiver asha: {med['optuna asha'][3] / med['quiver asha'][3]:.2f}")


if __name__ == "__main__":
    main()
