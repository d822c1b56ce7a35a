"""The full comparison report against the bare OLS fit of the same model, from 1,000 to 1,000,000 runs x 12 configurations.

Prints ratios measured within this one run, never absolute thresholds:
- time: the full comparison report (descriptives with the IQM intervals, bootstrap included, assumption checks,
  ANOVA with HC3 tests, Welch's ANOVA, pairwise, equivalence, power; rendered as markdown, HTML and JSON;
  figures and cards excluded) / fitting `log J/token ~ C(dtype) * C(batch_size)` with statsmodels' formula OLS;
- memory: the report's peak traced allocation above the table / the loaded table's size (pandas deep size), and
  the same for reading run records (JSON Lines) and reporting on them.
The goals of issue 11: at most 2x the OLS fit at 100k runs, 1.5x at 1M, peak memory at most 2x the table.

Usage:
    python benchmarks/report_scale.py [--sizes 1000,10000,100000,1000000] [--repeat 3] [--records-max 100000] [--figures]
"""
import argparse, json, tempfile, time, tracemalloc
from pathlib import Path
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


def peak_of(f):
    "Peak traced allocation (bytes) while `f` runs, above what was allocated before, and its result."
    tracemalloc.start()
    try:
        out = f()
        return tracemalloc.get_traced_memory()[1], out
    finally: tracemalloc.stop()


def table_bytes(df): return int(df.memory_usage(deep=True).sum())


def write_records(runs, path:Path):
    "The sweep as run records in a JSON Lines file, one line per run, as the store writes them (without an fsync per line)."
    from energytok.card import simulated_records
    from energytok.store import make_record
    recs = simulated_records(runs)
    with open(path, 'w') as f:
        for r in recs.to_dict(orient='records'):
            f.write(json.dumps(make_record(**r), allow_nan=False, separators=(',', ':')) + '\n')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default='1000,10000,100000,1000000', help='runs per sweep, comma-separated')
    ap.add_argument('--repeat', type=int, default=3, help='timed repetitions (the fastest counts)')
    ap.add_argument('--records-max', type=int, default=100_000, help='largest sweep also written and read back as run records')
    ap.add_argument('--figures', action='store_true', help='also time the report with its figures and cards')
    args = ap.parse_args()
    import statsmodels.formula.api as smf
    from energytok.report import compare_runs, report_cli
    from energytok.store import load_runs

    def report(runs, **kw):
        rep = compare_runs(runs, 'j_per_token', ['dtype', 'batch_size'], figures=False, cards=False, **kw)
        rep.to_markdown(); rep.to_html(); rep.to_json()
        return rep

    compare_runs(sweep(240), 'j_per_token', ['dtype', 'batch_size'], figures=False, cards=False) # imports, caches
    print("full comparison report (every table, bootstrap included, markdown + HTML + JSON; no figures, no cards)")
    print(f"{'runs':>10} {'configs':>8} {'OLS fit s':>10} {'report / OLS':>13} {'peak / table':>13}  stages (share of the report)")
    last = None
    for n in [int(s) for s in args.sizes.split(',')]:
        runs = sweep(n)
        data = runs.assign(y=np.log(runs.j_per_token), dtype=runs.dtype.astype(str), batch_size=runs.batch_size.astype(str))
        ols_s, _ = best_of(lambda: smf.ols('y ~ C(dtype) * C(batch_size)', data).fit(), args.repeat)
        del data
        rep_s, rep = best_of(lambda: report(runs), args.repeat)
        peak, _ = peak_of(lambda: report(runs))
        total = sum(rep.timings.values())
        stages = ', '.join(f'{k} {v / total:.0%}' for k, v in rep.timings.items() if v / total >= 0.05)
        print(f"{len(runs):>10,} {len(rep.configs):>8} {ols_s:>10.3f} {rep_s / ols_s:>12.2f}x {peak / table_bytes(runs):>12.2f}x  {stages}"
              + (f"  NOT COMPUTED: {rep.not_computed}" if rep.not_computed else ''))
        if args.figures:
            fig_s, _ = best_of(lambda: compare_runs(runs, 'j_per_token', ['dtype', 'batch_size']), 1)
            print(f"{'':>10} with 7 figures and 12 cards: {fig_s / ols_s:.2f}x the OLS fit")
        last = n
    print("goals: at most 2x the OLS fit at 100,000 runs and 1.5x at 1,000,000; peak at most 2x the table")

    sizes = [int(s) for s in args.sizes.split(',') if int(s) <= args.records_max]
    if sizes:
        print("\nrun records (JSON Lines) read back with load_runs, then `energytok report` on them (figures excluded)")
        print(f"{'runs':>10} {'file MB':>8} {'load peak / table':>18} {'load + report peak / table':>27}")
        with tempfile.TemporaryDirectory() as d:
            for n in sizes:
                path = Path(d) / f'{n}' / 'runs.jsonl'; path.parent.mkdir()
                write_records(sweep(n), path)
                peak_load, table = peak_of(lambda: load_runs(path))
                size = table_bytes(table); del table
                def both():
                    import contextlib, io
                    with contextlib.redirect_stdout(io.StringIO()):
                        report_cli.__wrapped__(str(path), out=str(Path(d) / f'rep{n}'), no_figures=True)
                peak_all, _ = peak_of(both)
                print(f"{n:>10,} {path.stat().st_size / 1e6:>8.1f} {peak_load / size:>17.2f}x {peak_all / size:>26.2f}x")


if __name__ == '__main__':
    main()
