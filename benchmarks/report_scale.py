"""Time the full comparison report for 100,000 runs x 12 configurations against fitting the bare OLS model.

Prints ratios measured within this one run (no absolute thresholds). Usage:
    python benchmarks/report_scale.py [--runs 100000] [--repeat 3]
"""
import argparse, tempfile, time
import numpy as np


def sweep(n_runs:int, seed:int=0):
    "A simulated (labelled `estimate:simulated`) sweep of 3 dtypes x 4 batch sizes with about `n_runs` runs."
    from energytok.stats_describe import simulate_runs
    effects = {'dtype': {'fp32': 1.0, 'bf16': 0.8, 'fp16': 0.82}, 'batch_size': {1: 1.0, 4: 0.5, 16: 0.22, 64: 0.12}}
    return simulate_runs(effects, n_reps=-(-n_runs // 12), cv=0.08, drift_per_run=0.0, seed=seed)


def best_of(f, repeat):
    "Fastest of `repeat` timed calls of `f` (seconds) and the last result."
    best, out = float('inf'), None
    for _ in range(repeat):
        t0 = time.perf_counter(); out = f(); best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=100_000)
    ap.add_argument('--repeat', type=int, default=3)
    args = ap.parse_args()
    import statsmodels.formula.api as smf
    from energytok.report import compare_runs
    runs = sweep(args.runs)
    data = runs.assign(y=np.log(runs.j_per_token), dtype=runs.dtype.astype(str), batch_size=runs.batch_size.astype(str))
    ols_s, _ = best_of(lambda: smf.ols('y ~ C(dtype) * C(batch_size)', data).fit(), args.repeat)

    def full_report():
        rep = compare_runs(runs, 'j_per_token', ['dtype', 'batch_size'])
        with tempfile.TemporaryDirectory() as d: rep.save(d)
        return rep

    report_s, rep = best_of(full_report, 1)
    stats_s, _ = best_of(lambda: compare_runs(runs, 'j_per_token', ['dtype', 'batch_size'], figures=False, cards=False), 1)
    print(f"runs: {len(runs):,} in {runs.groupby(['dtype', 'batch_size']).ngroups} configurations")
    print(f"bare OLS fit of the same log J/token ~ dtype * batch_size model (best of {args.repeat}): 1.0x ({ols_s:.2f} s here)")
    print(f"statistics only (no figures, no cards):  {stats_s / ols_s:8.1f}x the OLS fit")
    print(f"full report (stats, 7 figures, 12 cards, markdown + HTML + JSON written): {report_s / ols_s:8.1f}x the OLS fit")
    print("stages of the full report, relative to the OLS fit:")
    for k, v in rep.timings.items(): print(f"  {k:<13} {v / ols_s:8.1f}x")


if __name__ == '__main__':
    main()
