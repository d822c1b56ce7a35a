"""`import energytok` wall time as a ratio to `python -c pass`, both measured in this one run.

Interleaves the two commands so drift on a shared machine hits both alike, and prints medians and the ratio.
Usage: python benchmarks/import_time.py [--repeats N]
"""
import argparse, statistics, subprocess, sys, time


def wall_s(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, '-c', code], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=15)
    n = ap.parse_args().repeats
    cases = {'pass': 'pass', 'import energytok': 'import energytok',
             'import energytok.production, energytok.cli': 'import energytok.production, energytok.cli'}
    times = {k: [] for k in cases}
    for _ in range(n):
        for k, code in cases.items(): times[k].append(wall_s(code))
    base = statistics.median(times['pass'])
    print(f"{'command':<46} {'median_s':>9} {'ratio_to_pass':>14}")
    for k, v in times.items():
        print(f"{k:<46} {statistics.median(v):>9.4f} {statistics.median(v) / base:>14.2f}")


if __name__ == '__main__':
    main()
