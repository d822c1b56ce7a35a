"""Harness overhead: generation under the harness (meter windows, syncs, per-step timing, token counting) vs bare
generation of the same prompts, interleaved in one process; and the wall time of the default `energytok run`.

Pairs alternate which of the two goes first, so drift on a shared machine hits both alike. Prints per-pair medians,
the median of the per-pair ratios harness/bare, and the extra time per generated token.
Usage: python benchmarks/harness_overhead.py [--pairs N] [--batch_size B] [--new_tokens T] [--skip_cli]
"""
import argparse, statistics, subprocess, sys, tempfile, time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--pairs', type=int, default=20)
    ap.add_argument('--batch_size', type=int, default=8)
    ap.add_argument('--prompt_tokens', type=int, default=64)
    ap.add_argument('--new_tokens', type=int, default=64)
    ap.add_argument('--dtype', default='fp32')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: 1 on CPU, as `energytok run`)')
    ap.add_argument('--skip_cli', action='store_true', help='do not time the default `energytok run`')
    a = ap.parse_args()

    from energytok.harness import BuiltinBackend, RunConfig, measure_generation, run_result, best_device
    from energytok.model import generate
    from energytok.meter import Meter
    import torch
    dev = best_device()
    threads = a.threads or (1 if dev == 'cpu' else None)
    if threads: torch.set_num_threads(threads)
    be = BuiltinBackend(dev, a.dtype)
    cfg = RunConfig(dtype=a.dtype, batch_size=a.batch_size, prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens, device=dev,
                    threads=threads)
    prompts = be.prompts(a.batch_size, a.prompt_tokens)
    be.quality()  # evaluated once, outside the timings, as in a sweep

    def bare():
        be.sync(); t0 = time.perf_counter()
        out = generate(be.model, prompts, a.new_tokens)
        be.sync(); return time.perf_counter() - t0, sum(map(len, out))

    def harness(meter):
        t0 = time.perf_counter()
        gen = measure_generation(be, cfg, meter, prompts)
        run_result(gen, cfg, be)
        return time.perf_counter() - t0, gen.decode_tokens

    with Meter() as meter:
        provenance = '+'.join(sorted({s.provenance for s in meter.sensors}))
        bare(); harness(meter)  # warm-up
        tb, th, ratios = [], [], []
        for i in range(a.pairs):
            if i % 2: h, b = harness(meter), bare()
            else: b, h = bare(), harness(meter)
            assert b[1] == h[1], 'both must generate the same number of tokens'
            tb.append(b[0]); th.append(h[0]); ratios.append(h[0] / b[0])
    n_tok = b[1]
    print(f'device {dev}, threads {torch.get_num_threads()}, dtype {a.dtype}, batch {a.batch_size}, prompt {a.prompt_tokens}, new {a.new_tokens}, '
          f'{a.pairs} interleaved pairs, meter sensors: {provenance}')
    print(f"{'case':<10} {'median_s':>10} {'tokens':>8}")
    print(f"{'bare':<10} {statistics.median(tb):>10.4f} {n_tok:>8}")
    print(f"{'harness':<10} {statistics.median(th):>10.4f} {n_tok:>8}")
    print(f'harness/bare ratio (median of pairs): {statistics.median(ratios):.3f}  '
          f'[p10 {sorted(ratios)[len(ratios)//10]:.3f}, p90 {sorted(ratios)[(9*len(ratios))//10]:.3f}]')
    print(f'extra time per generated token: {(statistics.median(th) - statistics.median(tb)) / n_tok * 1e6:.1f} us '
          f'({(statistics.median(th) - statistics.median(tb)) / statistics.median(tb) * 100:.1f}% of bare)')

    if a.skip_cli: return
    exe = str(Path(sys.executable).parent/'energytok')
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        p = subprocess.run([exe, 'run', '--quiet', '--out', d], capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if p.returncode: sys.exit(p.stderr)
    print(f'default `energytok run`: {wall:.1f} s wall ({wall / 60:.2f} of the one-minute budget); its own report:')
    print('\n'.join('    ' + l for l in p.stdout.splitlines()[:3]))


if __name__ == '__main__':
    main()
