"""What the meter costs the workload it measures, measured within one run and printed as ratios.

1. Sampler overhead: the CPU time the sampler thread itself uses per second (with the main thread asleep, a
   figure that other processes on the machine barely disturb); then a fixed workload's throughput with the sampler at 100 Hz and at 1 kHz against no sampler,
   in interleaved runs (the order of the three conditions is shuffled in every repetition; ratios are paired
   within a repetition). Workloads: greedy generation with the built-in model when it can be loaded, a torch
   matmul loop, and a pure-Python loop (the worst case for a Python sampler thread, which competes for the GIL).
   torch runs one intra-op thread, as a process driving a GPU mostly does, so that on a small machine the
   workload's own threads do not oversubscribe the cores and swamp what the sampler costs.
2. Highest sustained sampling rate with a replay sensor, and its tick lateness (jitter) percentiles.
3. Window open+close latency of energytok against codecarbon's OfflineEmissionsTracker start+stop (offline,
   country set, nothing saved, logging quiet).

Usage: python benchmarks/meter_overhead.py [--reps 15] [--sensors machine|replay] [--quick]
"""
import argparse, random, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np

from energytok.meter import Meter
from energytok.sensors import ReplaySensor, available_sensors, load_trace, _codecarbon_quiet

DATA = Path(__file__).parents[1] / 'data'


def quartiles(xs):
    q = np.percentile(xs, [25, 50, 75])
    return f"median {q[1]:.4f} (IQR {q[0]:.4f}-{q[2]:.4f})"


# ---- workloads: each returns a callable doing a fixed amount of work ---------------------------------------------
def python_workload(n=4_000_000):
    def run():
        s = 0
        for i in range(n): s += i * i
        return s
    return run


def matmul_workload(size=384, iters=60):
    import torch
    a = torch.randn(size, size)
    def run():
        for _ in range(iters): a @ a
    return run


def model_workload(new_tokens=32, batch=4):
    "Greedy generation with the built-in model (None if it cannot be loaded here)."
    try:
        from energytok.model import ByteTokenizer, generate, load_builtin
        model = load_builtin('cpu', 'fp32')
        prompt = ByteTokenizer().encode('In the beginning was the Word, and the Word was with God')
    except Exception as e:
        print(f"  (built-in model not available: {type(e).__name__}: {e})")
        return None
    return lambda: generate(model, [prompt] * batch, new_tokens)


def sampler_overhead(name, work, sensors, reps):
    "Paired throughput ratios (sampler / none) at 100 Hz and 1 kHz, interleaved."
    work()  # warm-up
    conds = {'none': None, '100 Hz': 0.01, '1 kHz': 0.001}
    times = {c: [] for c in conds}
    for _ in range(reps):
        order = list(conds); random.shuffle(order)
        for c in order:
            m = Meter(sensors, period_s=conds[c]).start() if conds[c] else None
            t = time.perf_counter(); work(); dt = time.perf_counter() - t
            if m: m.stop()
            times[c].append(dt)
    print(f"\n[{name}] one unit of work takes {statistics.median(times['none']) * 1e3:.1f} ms without the sampler")
    for c in ('100 Hz', '1 kHz'):
        ratios = [n / s for n, s in zip(times['none'], times[c])]  # throughput with sampler / without
        print(f"  throughput ratio {c:>6} / none: {quartiles(ratios)}  -> overhead {100 * (1 - statistics.median(ratios)):+.2f} %")


# ---- sampler CPU cost ------------------------------------------------------------------------------------------------
def sampler_cpu(sensors, duration_s):
    "CPU time the sampler thread uses per second of wall time while the main thread sleeps (robust to other load)."
    print("\n[sampler CPU use, main thread asleep]")
    for label, period in (('none', None), ('100 Hz', 0.01), ('1 kHz', 0.001)):
        m = Meter(sensors, period_s=period).start() if period else None
        c, t = time.process_time(), time.perf_counter()
        time.sleep(duration_s)
        frac = (time.process_time() - c) / (time.perf_counter() - t)
        if m: m.stop()
        print(f"  {label:>6}: {100 * frac:.3f} % of one core")


# ---- sampling rate --------------------------------------------------------------------------------------------------
def max_rate(duration_s):
    print("\n[sampling rate, replay sensor]")
    print(f"  {'period':>9} {'achieved/requested':>19} {'overruns':>9} {'jitter p50':>11} {'p99':>9} {'max':>9}")
    best = None
    for period in (1e-3, 5e-4, 2e-4, 1e-4):
        with Meter([ReplaySensor(load_trace(DATA/'replay_sine.csv'))], period_s=period) as m:
            time.sleep(duration_s)
        s = m.sampler_stats()
        ratio = s['achieved_period_s'] / period
        over = s['overruns'] / max(s['ticks'], 1)
        print(f"  {period * 1e6:7.0f}us {ratio:19.3f} {100 * over:8.1f}% {s['jitter_p50_s'] * 1e6:9.0f}us "
              f"{s['jitter_p99_s'] * 1e6:7.0f}us {s['jitter_max_s'] * 1e6:7.0f}us")
        if ratio <= 1.05 and over <= 0.01: best = (period, s)
    if best:
        print(f"  highest sustained rate: {1 / best[0]:.0f} Hz (achieved period within 5 % and <= 1 % overruns), "
              f"p99 jitter {best[1]['jitter_p99_s'] * 1e6:.0f} us = {best[1]['jitter_p99_s'] / best[0]:.2f} periods")
    else:
        print("  no tested period was sustained (achieved period within 5 %, <= 1 % overruns)")


# ---- window latency vs codecarbon -----------------------------------------------------------------------------------
def window_latency(sensors, n_windows, n_trackers):
    print("\n[window open+close latency]")
    lat = []
    with Meter(sensors, period_s=0.1) as m:
        for i in range(n_windows):
            t = time.perf_counter(); m.begin_window('w'); m.end_window('w'); lat.append(time.perf_counter() - t)
    et = statistics.median(lat)
    print(f"  energytok begin_window+end_window ({', '.join(s.domain for s in sensors)}): "
          f"median {et * 1e3:.3f} ms, p90 {np.percentile(lat, 90) * 1e3:.3f} ms over {n_windows}")
    with _codecarbon_quiet():
        from codecarbon import OfflineEmissionsTracker
        cc, cold = [], None
        for i in range(n_trackers):
            tr = OfflineEmissionsTracker(country_iso_code='USA', save_to_file=False, log_level='error',
                                         output_dir=tempfile.gettempdir(), allow_multiple_runs=True, tracking_mode='machine')
            t = time.perf_counter(); tr.start(); tr.stop(); dt = time.perf_counter() - t
            if cold is None: cold = dt
            else: cc.append(dt)
    cct = statistics.median(cc)
    print(f"  codecarbon OfflineEmissionsTracker start+stop: first {cold * 1e3:.1f} ms (hardware detection), "
          f"then median {cct * 1e3:.3f} ms over {len(cc)}")
    print(f"  ratio codecarbon / energytok: {cct / et:.1f}x warm, {cold / et:.0f}x first")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reps', type=int, default=15, help='interleaved repetitions per workload')
    p.add_argument('--sensors', choices=['machine', 'replay'], default='machine',
                   help="sensors for the overhead and latency runs: this machine's, or a replay sensor")
    p.add_argument('--quick', action='store_true', help='fewer repetitions and shorter runs (a smoke test)')
    a = p.parse_args(argv)
    reps = 3 if a.quick else a.reps
    sensors = available_sensors() if a.sensors == 'machine' else [ReplaySensor(load_trace(DATA/'replay_sine.csv'))]
    print("sensors:", ', '.join(f"{s.domain} ({s.provenance}{', estimate' if s.estimated else ''})" for s in sensors))
    for s in sensors:
        t = time.perf_counter(); n = 200
        for _ in range(n): s.read()
        print(f"  one read of {s.domain}: {(time.perf_counter() - t) / n * 1e6:.0f} us")
    import torch
    torch.set_num_threads(1)
    workloads = [('python loop', python_workload()), ('torch matmul (cpu, 1 thread)', matmul_workload())]
    if (mw := model_workload()) is not None: workloads.insert(0, ('built-in model generate (cpu, 1 thread)', mw))
    sampler_cpu(sensors, 0.5 if a.quick else 3.0)
    for name, work in workloads: sampler_overhead(name, work, sensors, reps)
    max_rate(0.3 if a.quick else 1.0)
    window_latency(sensors, 20 if a.quick else 200, 3 if a.quick else 8)
    return 0


if __name__ == '__main__':
    sys.exit(main())
