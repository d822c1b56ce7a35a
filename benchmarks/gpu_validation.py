"""Validate the meter on a real NVIDIA GPU and write the evidence to a folder.

Meters a fixed bf16 matmul workload (and the built-in model, when `energytok.model` can load it) and reports:
- counter vs polling agreement: NVML's energy counter against trapezoidal integration of polled power, per
  window, for windows from 0.25 s to 8 s;
- the achieved sampling period and tick jitter at 100 Hz and 1 kHz;
- sampler overhead: matmul throughput at 100 Hz and 1 kHz against no sampler, interleaved repetitions;
- the idle baseline, and one window's full power trace (CSV, usable as a replay trace).

Writes to OUT_DIR: results.json (everything), windows.csv (one row per window), overhead.csv, sampler.csv,
trace_matmul.csv, model.csv (when the built-in model ran). Finishes in about 3 minutes on an H200 (a guard stops adding sections after 8 minutes).
Exits with code 2 and a message when no NVIDIA GPU is visible.

Usage: python benchmarks/gpu_validation.py OUT_DIR [--quick]
       python benchmarks/gpu_validation.py OUT_DIR --dry-run-fake   # exercise the script without a GPU
"""
import argparse, csv, json, platform, random, statistics, sys, time
from pathlib import Path

import energytok
from energytok.meter import Meter
from energytok.nvml import FakeNVML, nvml_statuses
from energytok.sensors import load_trace

DATA = Path(__file__).parents[1] / 'data'
BUDGET_S = 8 * 60  # stop adding sections after this long, to finish well under 10 minutes


def gpu_sensors(dry_run):
    "The visible GPUs' NVML sensors, or None with the reason."
    if dry_run:  # a stand-in GPU playing a synthetic trace: exercises the code path only, measures nothing
        fake = FakeNVML([dict(name='FAKE NVML stand-in (dry run)', trace=load_trace(DATA/'replay_steps.json'),
                              counter_update_s=0.1)])
        st = nvml_statuses(fake, env={})
    else:
        st = nvml_statuses()
    present = [s.sensor for s in st if s.present]
    return present, '; '.join(s.reason for s in st if not s.present)


class Workload:
    "A fixed square matmul loop on one device; `run(n)` does n matmuls and waits for them."
    def __init__(self, device, size, dtype):
        import torch
        self.torch, self.device, self.size = torch, device, size
        self.a = torch.randn(size, size, device=device, dtype=dtype)
        self.b = torch.randn(size, size, device=device, dtype=dtype)
        self.flop_per_matmul = 2 * size ** 3
        self.sync()

    def sync(self):
        if self.device == 'cuda': self.torch.cuda.synchronize()

    def run(self, n):
        for _ in range(n): self.a @ self.b
        self.sync()

    def calibrate(self, target_s=1.0):
        "Seconds per matmul: the fastest of three runs of about `target_s` each."
        self.run(3)
        n, dt = 4, 0.0
        while dt < target_s:
            t = time.perf_counter(); self.run(n); dt = time.perf_counter() - t
            if dt < target_s: n *= 2
        runs = []
        for _ in range(3):
            t = time.perf_counter(); self.run(n); runs.append(time.perf_counter() - t)
        return min(runs) / n


def window_row(r, workload_name, target_s, period_s, n_matmuls=None, flop=None):
    "One row of windows.csv from a WindowResult."
    d = r.to_dict()
    row = dict(workload=workload_name, target_s=target_s, period_s=period_s, duration_s=r.duration_s,
               energy_j=r.energy_j, provenance=r.provenance_label, n_samples=r.n_samples, peak_power_w=r.peak_power_w,
               avg_power_w=r.avg_power_w, idle_power_w=r.idle_power_w, energy_idle_subtracted_j=r.energy_idle_subtracted_j,
               flags=' | '.join(r.flags))
    for dom in r.energy_by_domain_j:
        row.update({f'{dom}_counter_j': d['counter_energy_by_domain_j'].get(dom),
                    f'{dom}_polling_j': d['polling_energy_by_domain_j'].get(dom),
                    f'{dom}_discrepancy': d['discrepancy_by_domain'].get(dom)})
    if n_matmuls is not None:
        row.update(n_matmuls=n_matmuls, flop_per_s=flop / r.duration_s, j_per_tflop=r.energy_j / (flop / 1e12))
    return row


def spread(xs):
    "Median, quartiles, extremes and count of `xs` (None when empty)."
    xs = sorted(xs)
    if not xs: return None
    q1, med, q3 = statistics.quantiles(xs, n=4, method='inclusive') if len(xs) > 1 else xs * 3
    return dict(median=med, q1=q1, q3=q3, min=xs[0], max=xs[-1], n=len(xs))


def pct(s):
    "A spread of fractions as 'median x% (IQR a-b%, n)', or 'n/a'."
    return 'n/a' if s is None else f"median {s['median']:.2%} (IQR {s['q1']:.2%}-{s['q3']:.2%}, n={s['n']})"


def write_csv(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, keys); w.writeheader(); w.writerows(rows)


def section_windows(sensors, wl, s_per_mm, quick, sync, scale):
    "Counter vs polling over windows of several lengths, at 100 Hz and 1 kHz."
    rows, sampler = [], []
    lengths = [scale * x for x in ((0.25, 1.0, 4.0) if quick else (0.25, 0.5, 1.0, 2.0, 4.0, 8.0))]
    for period in (0.01, 0.001):
        with Meter(sensors, period_s=period, sync=sync) as m:
            m.measure_idle(scale * (1.0 if quick else 3.0))
            for target in lengths:
                for rep in range(1 if quick else 3):
                    n = max(1, round(target / s_per_mm))
                    with m.window(f'matmul-{target:g}s-{rep}') as w: wl.run(n)
                    rows.append(window_row(w.result, 'matmul', target, period, n, n * wl.flop_per_matmul))
            last = w.result
        sampler.append(dict(period_s=period, **{k: v for k, v in m.sampler_stats().items() if k != 'period_s'}))
    return rows, sampler, last


def section_overhead(sensors, wl, s_per_mm, reps, sync, scale):
    "Matmul throughput with the sampler at 100 Hz and 1 kHz against none, interleaved and paired by repetition."
    n = max(1, round(scale * 2.0 / s_per_mm))
    conds, rows = {'none': None, '100Hz': 0.01, '1kHz': 0.001}, []
    for rep in range(reps):
        order = list(conds); random.shuffle(order)
        for c in order:
            m = Meter(sensors, period_s=conds[c], sync=sync).start() if conds[c] else None
            t = time.perf_counter(); wl.run(n); dt = time.perf_counter() - t
            if m: m.stop()
            rows.append(dict(repetition=rep, condition=c, seconds=dt, matmuls=n, flop_per_s=n * wl.flop_per_matmul / dt))
    by = {c: [r['seconds'] for r in rows if r['condition'] == c] for c in conds}
    summary = {c: spread(a / b for a, b in zip(by['none'], by[c])) for c in ('100Hz', '1kHz')}  # throughput ratios
    return rows, summary


def section_model(sensors, device, sync, quick, scale):
    "The built-in model's greedy generation under the meter, if `energytok.model` can load it here."
    try:
        from energytok.model import ByteTokenizer, builtin_meta, generate, load_builtin
        model = load_builtin(device, 'bf16' if device == 'cuda' else 'fp32')
        prompt = ByteTokenizer().encode('In the beginning was the Word, and the Word was with God, and the Word was God.')
        max_len = builtin_meta()['config']['max_seq_len']
    except Exception as e:
        return None, f"built-in model skipped: {type(e).__name__}: {e}"
    batch, new_tokens = (4, 16) if quick else (64, max_len - len(prompt))
    prompts = [prompt] * batch
    t = time.perf_counter(); generate(model, prompts, new_tokens)  # warm-up, and the time of one generation
    if sync: sync()
    repeats = max(1, round(scale * 2.0 / (time.perf_counter() - t)))  # windows of about 2 s
    rows = []
    with Meter(sensors, period_s=0.01, sync=sync) as m:
        for k in range(1 if quick else 3):
            with m.window(f'generate-{k}') as w: toks = sum(len(o) for _ in range(repeats) for o in generate(model, prompts, new_tokens))
            row = window_row(w.result, 'builtin-generate', None, 0.01)
            row.update(batch_size=batch, new_tokens=new_tokens, generations=repeats, generated_tokens=toks,
                       tokens_per_s=toks / w.result.duration_s, j_per_token=w.result.energy_j / toks)
            rows.append(row)
    return rows, ''


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('out_dir', help='folder to write results.json and the CSV files to')
    p.add_argument('--quick', action='store_true', help='fewer and shorter windows (about a minute)')
    p.add_argument('--dry-run-fake', action='store_true',
                   help='no GPU: a FakeNVML stand-in and a CPU matmul; exercises the script, measures nothing')
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    sensors, why = gpu_sensors(a.dry_run_fake)
    if not sensors:
        print(f"gpu_validation: no NVIDIA GPU visible, nothing to validate ({why})", file=sys.stderr)
        return 2
    import torch
    device = 'cpu' if a.dry_run_fake else 'cuda'
    if device == 'cuda' and not torch.cuda.is_available():
        print("gpu_validation: NVML sees a GPU but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    out = Path(a.out_dir); out.mkdir(parents=True, exist_ok=True)
    sync = torch.cuda.synchronize if device == 'cuda' else None
    wl = Workload(device, 8192 if device == 'cuda' else 256, torch.bfloat16 if device == 'cuda' else torch.float32)
    scale = 0.1 if a.dry_run_fake else 1.0  # a dry run only exercises the code: shorter everything
    s_per_mm = wl.calibrate(scale * (0.5 if a.quick else 2.0))
    env = dict(dry_run=a.dry_run_fake, energytok_version=energytok.__version__, torch_version=torch.__version__,
               cuda_version=torch.version.cuda, hostname=platform.node(), python=platform.python_version(),
               device=torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu (dry run)',
               sensors=[s.info() for s in sensors], temperature_before_c={s.domain: s.temperature_c() for s in sensors},
               matmul=dict(size=wl.size, dtype=str(wl.a.dtype), seconds_per_matmul=s_per_mm,
                           flop_per_s=wl.flop_per_matmul / s_per_mm))
    print(f"sensors: {[s.domain + ' ' + s.method().get('device_name', '') for s in sensors]}; "
          f"matmul {wl.size}: {env['matmul']['flop_per_s'] / 1e12:.1f} TFLOP/s")
    results, skipped = dict(environment=env), []

    windows, sampler, last = section_windows(sensors, wl, s_per_mm, a.quick, sync, scale)
    write_csv(out/'windows.csv', windows); write_csv(out/'sampler.csv', sampler)
    last.trace().to_csv(out/'trace_matmul.csv', index=False)
    disc = [w[k] for w in windows for k in w if k.endswith('_discrepancy') and w[k] is not None]
    long_disc = [w[k] for w in windows if (w['target_s'] or 0) >= 2 * scale for k in w if k.endswith('_discrepancy') and w[k] is not None]
    results.update(windows=windows, sampler=sampler, agreement=dict(  # (polling - counter) / counter, per window
        abs_discrepancy_all=spread(map(abs, disc)), abs_discrepancy_windows_ge_2s=spread(map(abs, long_disc))))

    (out/'results.json').write_text(json.dumps(results, indent=1, default=str))  # kept if a later section fails
    if time.perf_counter() - t_start < BUDGET_S:
        try:
            ov_rows, ov = section_overhead(sensors, wl, s_per_mm, 3 if a.quick else 7, sync, scale)
            write_csv(out/'overhead.csv', ov_rows)
            results['overhead_throughput_ratio'] = ov
        except Exception as e: skipped.append(f'overhead failed: {type(e).__name__}: {e}')
    else: skipped.append('overhead: time budget spent')
    if time.perf_counter() - t_start < BUDGET_S:
        try:
            model_rows, why = section_model(sensors, device, sync, a.quick, scale)
            if model_rows: write_csv(out/'model.csv', model_rows); results['model'] = model_rows
            else: skipped.append(why)
        except Exception as e: skipped.append(f'built-in model failed: {type(e).__name__}: {e}')
    else: skipped.append('built-in model: time budget spent')

    env['temperature_after_c'] = {s.domain: s.temperature_c() for s in sensors}
    results.update(skipped=skipped, elapsed_s=time.perf_counter() - t_start)
    (out/'results.json').write_text(json.dumps(results, indent=1, default=str))
    ag = results['agreement']
    print(f"counter vs polling |discrepancy|: all windows {pct(ag['abs_discrepancy_all'])}; "
          f"windows >= 2 s {pct(ag['abs_discrepancy_windows_ge_2s'])}")
    for s in sampler:
        achieved = 'n/a' if s['achieved_period_s'] is None else f"{s['achieved_period_s'] * 1e3:.3f} ms"
        print(f"sampler at {1 / s['period_s']:.0f} Hz: achieved period {achieved}, "
              f"p99 jitter {s['jitter_p99_s'] * 1e6:.0f} us, {s['overruns']} overruns")
    if 'overhead_throughput_ratio' in results:
        print('throughput ratio with sampler / without, median (IQR): ' +
              ', '.join(f"{k} {v['median']:.4f} ({v['q1']:.4f}-{v['q3']:.4f})"
                        for k, v in results['overhead_throughput_ratio'].items()))
    for why in skipped: print(f"skipped: {why}")
    if a.dry_run_fake: print("DRY RUN with a FakeNVML stand-in: these numbers are not measurements")
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out} in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
