"""Validate the meter on a real NVIDIA GPU and write the evidence to a folder.

Run it through `bash benchmarks/gpu_validation.sh` on a machine with a GPU (it sets the path and installs the
carried wheels); `python benchmarks/gpu_validation.py OUT_DIR` works wherever energytok imports. Sections, each of
which fails on its own (its error goes into results.json and the next section runs):
- environment: versions, the GPUs and which of them CUDA numbers how (NVML's mapping checked against torch's);
- nvml_calls: how long each NVML call energytok makes takes;
- counter_update: the energy counter's observed refresh period, idle and under load (energytok assumes 100 ms),
  and how often the instant power field changes;
- idle: the idle baseline, taken only once the GPU's power and temperature have settled (bounded wait, recorded);
- windows: NVML's energy counter against trapezoidal integration of polled power, per window, 0.25 s to 8 s, at
  100 Hz and 1 kHz, with the sampler's achieved period and jitter;
- scope: whether the counter and the instant power field cover the same scope (a constant gap in W across power
  levels is scope, not sampling), and which power scopes the field answers;
- multi_gpu (more than one GPU only): a matmul on GPU 0 alone must raise GPU 0's energy and leave the others near idle;
- llm_1b: a random-initialised Llama of about 1.2 B parameters (Llama-3.2-1B's shape, built here, nothing
  downloaded) through `energytok run --model FOLDER` at two batch sizes in bf16; compared with the ML.ENERGY
  Leaderboard's figures when `--reference` names their CSV (or later: `--compare-only`);
- builtin_model: the built-in model's greedy generation under the meter;
- overhead: matmul throughput with the sampler at 100 Hz and 1 kHz against none, interleaved repetitions.

Writes to OUT_DIR at most 7 files (the shell wrapper adds log.txt): results.json (everything, rewritten after
each section), windows.csv, overhead.csv, trace_matmul.csv, model.csv, llm.csv. Every section checks the time
budget (`--budget-s`, default 450 s) inside its loops, not only between sections, and ends early when it is spent.
Exits with code 2 and a message when no NVIDIA GPU is visible.

Usage: bash benchmarks/gpu_validation.sh [--quick] [--dry-run-fake]      # on the device machine, from the repo root
       python benchmarks/gpu_validation.py OUT_DIR [--quick] [--budget-s S] [--reference CSV]
       python benchmarks/gpu_validation.py OUT_DIR --dry-run-fake         # exercise everything without a GPU
       python benchmarks/gpu_validation.py OUT_DIR --compare-only --reference ../shared/reference/mlenergy_llm_v3.csv
"""
import argparse, csv, json, os, platform, random, signal, statistics, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))  # `python benchmarks/gpu_validation.py` from a checkout

import energytok
from energytok.meter import Meter, uncertainty_vs_discrepancy
from energytok.nvml import FakeNVML, gpu_sensors, _value
from energytok.sensors import load_trace

DATA = ROOT / 'data'
BUDGET_S = 450  # default time budget of the whole script, s (the shell wrapper passes what is left of 8 minutes)
LLM_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
              num_key_value_heads=8, max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True)  # Llama-3.2-1B's shape
LLM_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)  # the dry run's stand-in


# ---- time budget -------------------------------------------------------------------------------------------------
class BudgetSpent(Exception): "The time budget ran out; the section stops where it is."
class Stopped(BaseException): "A signal (the shell wrapper's time-out) stops the whole run; results.json is still written."
class Skip(Exception): "The section does not apply here (the reason says why)."


class Budget:
    "Seconds left of the script's time budget; sections call `check` inside their loops."
    def __init__(self, limit_s): self.t0, self.limit_s = time.perf_counter(), float(limit_s)
    def elapsed_s(self): return time.perf_counter() - self.t0
    def left_s(self): return self.limit_s - self.elapsed_s()
    def check(self, need_s=0.0, what=''):
        "Raise `BudgetSpent` unless `need_s` seconds are left."
        if self.left_s() < need_s:
            raise BudgetSpent(f"{what or 'section'}: time budget spent ({self.elapsed_s():.0f} of {self.limit_s:.0f} s)")


# ---- small helpers -----------------------------------------------------------------------------------------------
def spread(xs):
    "Median, quartiles, extremes and count of `xs` (None when empty)."
    xs = sorted(x for x in xs if x is not None)
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


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else None


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
        if self.device.startswith('cuda'): self.torch.cuda.synchronize(self.device)

    def launch(self, n):
        "Queue n matmuls without waiting (on CPU they run now)."
        for _ in range(n): self.a @ self.b

    def run(self, n):
        self.launch(n); self.sync()

    def run_for(self, seconds, s_per_mm, budget, what, chunk_s=0.1):
        "Matmuls for about `seconds`, in chunks of about `chunk_s`, checking the budget between chunks; how many ran."
        end, n, per_mm = time.perf_counter() + seconds, 0, s_per_mm
        while (left := end - time.perf_counter()) > 0:
            budget.check(1, what)
            k = max(1, round(min(chunk_s, left) / per_mm))
            t = time.perf_counter(); self.run(k); per_mm = (time.perf_counter() - t) / k  # follow the speed actually seen
            n += k
        return n

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


# ---- the GPUs ----------------------------------------------------------------------------------------------------
def dry_run_nvml():
    "Two stand-in GPUs playing synthetic traces: exercises every code path, measures nothing."
    steps = load_trace(DATA / 'replay_steps.json')
    return FakeNVML([dict(name='FAKE NVML stand-in (dry run)', trace=steps, counter_update_s=0.02),
                     dict(name='FAKE NVML stand-in (dry run)', power_w=70.0, counter_update_s=0.02)])


def select(nvml, gpus=None):
    "The GPU selection (None: every visible GPU) from NVML or the dry run's stand-in."
    return gpu_sensors(gpus, nvml=nvml, env={} if nvml is not None else None)


# ---- sections ----------------------------------------------------------------------------------------------------
def section_nvml_calls(nv, handle, n=200):
    "Median and 99th-percentile time of each NVML call energytok makes while metering, µs."
    calls = {'nvmlDeviceGetTotalEnergyConsumption': lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle),
             'nvmlDeviceGetFieldValues(POWER_INSTANT)': lambda: nv.nvmlDeviceGetFieldValues(handle, [nv.NVML_FI_DEV_POWER_INSTANT]),
             'nvmlDeviceGetPowerUsage': lambda: nv.nvmlDeviceGetPowerUsage(handle),
             'nvmlDeviceGetTemperature': lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)}
    out = {}
    for name, fn in calls.items():
        ts = []
        try:
            for _ in range(n):
                t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
            out[name] = dict(median_us=statistics.median(ts) * 1e6, p99_us=percentile(ts, 0.99) * 1e6, n=n)
        except nv.NVMLError as e: out[name] = dict(error=f"{type(e).__name__}: {e}")
    return out


def observed_changes(read, duration_s, budget, what):
    "Poll `read()` as fast as possible for `duration_s`; the times and values at which it changed."
    t_end, last, changes, polls = time.perf_counter() + duration_s, None, [], 0
    while time.perf_counter() < t_end:
        v = read(); t = time.perf_counter(); polls += 1
        if v != last:
            if last is not None: changes.append((t, v))
            last = v
        if polls % 1000 == 0: budget.check(1, what)
    return changes, polls


def update_summary(changes, polls, duration_s):
    "Intervals between changes of a polled value: the refresh period it shows."
    iv = [b[0] - a[0] for a, b in zip(changes, changes[1:])]
    s = spread(iv)
    return dict(changes=len(changes), polls=polls, duration_s=duration_s, poll_period_us=duration_s / max(polls, 1) * 1e6,
                interval_s=s, p10_s=percentile(iv, 0.1), p90_s=percentile(iv, 0.9))


def section_counter_update(sensor, wl, s_per_mm, budget, scale):
    "The counter's refresh period and the polled power reading's, idle and under a queued matmul load."
    nv, handle = sensor.nv, sensor.handle
    counter = lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle)
    instant = sensor.read_power_w  # the power reading energytok polls (the instant field where the driver has it)
    out, dur = {}, 1.5 * scale
    for load in ('idle', 'load'):
        for name, read in (('counter', counter), (f'power_{sensor.power_field}', instant)):
            budget.check(dur + 2, 'counter_update')
            if load == 'load':  # queue about 1.3 x the polling time of GPU work, then poll while it runs
                wl.launch(max(1, min(900, round(dur * 1.3 / s_per_mm))))
            ch, polls = observed_changes(read, dur, budget, 'counter_update')
            wl.sync()
            out[f'{name}_{load}'] = update_summary(ch, polls, dur)
    med = [out[k]['interval_s']['median'] for k in ('counter_idle', 'counter_load') if out[k]['interval_s']]
    out['counter_update_s'] = statistics.median(med) if med else None
    out['assumed_s'] = sensor.update_period_s
    return out


def settle(sensor, budget, max_s, window_s, period_s=0.25, power_tol_w=3.0, power_tol_rel=0.03, temp_tol_c=1.0):
    "Wait (at most `max_s`) until power and temperature have stayed within tolerance for `window_s`; how long it took."
    t0, trace = time.perf_counter(), []
    while True:
        t = time.perf_counter() - t0
        try: p = sensor.read().power_w
        except Exception: p = None
        trace.append((t, p, sensor.temperature_c()))
        recent = [x for x in trace if x[0] >= t - window_s]
        if t >= window_s and recent and all(x[1] is not None for x in recent):
            ps, temps = [x[1] for x in recent], [x[2] for x in recent if x[2] is not None]
            p_ok = max(ps) - min(ps) <= max(power_tol_w, power_tol_rel * statistics.median(ps))
            t_ok = not temps or max(temps) - min(temps) <= temp_tol_c
            if p_ok and t_ok:
                return dict(settled=True, settle_s=t, window_s=window_s, power_w=statistics.median(ps),
                            temperature_c=temps[-1] if temps else None, trace=trace[::max(1, len(trace) // 120)])
        if t >= max_s or budget.left_s() < 30:
            return dict(settled=False, settle_s=t, window_s=window_s, power_w=trace[-1][1], temperature_c=trace[-1][2],
                        trace=trace[::max(1, len(trace) // 120)])
        time.sleep(period_s)


def window_row(r, workload_name, target_s, period_s, n_matmuls=None, flop=None):
    "One row of windows.csv from a WindowResult."
    d = r.to_dict()
    row = dict(workload=workload_name, target_s=target_s, period_s=period_s, duration_s=r.duration_s,
               energy_j=r.energy_j, provenance=r.provenance_label, n_samples=r.n_samples, peak_power_w=r.peak_power_w,
               avg_power_w=r.avg_power_w, idle_power_w=r.idle_power_w, energy_idle_subtracted_j=r.energy_idle_subtracted_j,
               flags=' | '.join(r.flags))
    for dom in d.get('counter_energy_by_domain_j', {}) or r.energy_by_domain_j:
        row.update({f'{dom}_counter_j': (d.get('counter_energy_by_domain_j') or {}).get(dom),
                    f'{dom}_polling_j': (d.get('polling_energy_by_domain_j') or {}).get(dom),
                    f'{dom}_discrepancy': (d.get('discrepancy_by_domain') or {}).get(dom)})
    row.update(energy_uncertainty_j=d.get('energy_uncertainty_j'))
    for u in uncertainty_vs_discrepancy([d]):  # the counter-polling gap against what the two figures' uncertainties allow
        dom = u['domain']
        row.update({f'{dom}_counter_u_j': u['counter_uncertainty_j'], f'{dom}_polling_u_j': u['polling_uncertainty_j'],
                    f'{dom}_gap_over_allowed': u['ratio'], f'{dom}_gap_within_uncertainty': u['within']})
    if n_matmuls is not None:
        row.update(n_matmuls=n_matmuls, flop_per_s=flop / r.duration_s,
                   j_per_tflop=None if r.energy_j is None else r.energy_j / (flop / 1e12))
    return row


def section_windows(sensors, wl, s_per_mm, quick, sync, scale, budget, idle):
    "Counter vs polling over windows of several lengths, at 100 Hz and 1 kHz; an idle window before each set."
    rows, sampler, last = [], [], None
    lengths = [scale * x for x in ((0.25, 1.0, 4.0) if quick else (0.25, 0.5, 1.0, 2.0, 4.0, 8.0))]
    for period in (0.01, 0.001):
        budget.check(10, 'windows')
        idle.append(dict(period_s=period, **settle(sensors[0], budget, max_s=(20 if quick else 45) * scale + 1, window_s=5 * scale)))
        with Meter(sensors, period_s=period, sync=sync) as m:
            idle[-1]['baseline'] = m.measure_idle(scale * (1.0 if quick else 3.0)).to_dict()
            with m.window(f'idle-{period:g}') as w: time.sleep(scale * (1.0 if quick else 3.0))
            rows.append(window_row(w.result, 'idle', None, period))
            for target in lengths:
                for rep in range(1 if quick else 2):
                    budget.check(target + 5, 'windows')
                    with m.window(f'matmul-{target:g}s-{rep}') as w: n = wl.run_for(target, s_per_mm, budget, 'windows')
                    rows.append(window_row(w.result, 'matmul', target, period, n, n * wl.flop_per_matmul))
                    last = w.result
        sampler.append(dict(period_s=period, **{k: v for k, v in m.sampler_stats().items() if k != 'period_s'}))
    return rows, sampler, last


def scope_check(windows, domain, min_s=0.9):
    "Whether the counter and the polled power cover the same scope: the gap between them, W, against power level."
    pts = [(w[f'{domain}_polling_j'] / w['duration_s'], w[f'{domain}_counter_j'] / w['duration_s']) for w in windows
           if w['duration_s'] >= min_s and w.get(f'{domain}_polling_j') and w.get(f'{domain}_counter_j') is not None]
    if len(pts) < 3: return dict(points=len(pts), verdict='not enough windows of 1 s or more')
    x = [p for p, _ in pts]; gap = [c - p for p, c in pts]
    mx, mg = statistics.fmean(x), statistics.fmean(gap)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (g - mg) for a, g in zip(x, gap)) / sxx if sxx else 0.0
    intercept = mg - slope * mx
    rel = [g / p for (p, _), g in zip(pts, gap) if p]
    out = dict(points=len(pts), polled_w=spread(x), gap_w=spread(gap), relative_gap=spread(rel), gap_intercept_w=intercept,
               gap_slope=slope, power_range_w=max(x) - min(x))
    med_abs = statistics.median(abs(r) for r in rel)
    if med_abs <= 0.02: out['verdict'] = f"same scope: counter and polled power agree to {med_abs:.1%} (median)"
    elif abs(slope) * out['power_range_w'] <= 0.5 * abs(intercept):
        out['verdict'] = (f"constant gap of {intercept:+.1f} W across {min(x):.0f}-{max(x):.0f} W: the counter and the power "
                          "field cover different scopes (not a sampling error)")
    else: out['verdict'] = f"gap grows with power ({slope:+.3f} W/W): a calibration or averaging difference, not scope"
    return out


def field_scopes(nv, handle):
    "Which power scopes the instant power field answers: GPU, module, memory."
    names = {'gpu': getattr(nv, 'NVML_POWER_SCOPE_GPU', 0), 'module': getattr(nv, 'NVML_POWER_SCOPE_MODULE', 1),
             'memory': getattr(nv, 'NVML_POWER_SCOPE_MEMORY', 2)}
    out = {}
    for name, scope in names.items():
        try:
            v = nv.nvmlDeviceGetFieldValues(handle, [(nv.NVML_FI_DEV_POWER_INSTANT, scope)])[0]
            out[name] = _value(v) / 1000 if int(v.nvmlReturn) == nv.NVML_SUCCESS else f'nvmlReturn {int(v.nvmlReturn)}'
        except Exception as e: out[name] = f"{type(e).__name__}: {e}"
    return out


def section_overhead(sensors, wl, s_per_mm, reps, sync, scale, budget):
    "Matmul throughput with the sampler at 100 Hz and 1 kHz against none, interleaved and paired by repetition."
    n = max(1, round(scale * 2.0 / s_per_mm))
    conds, rows = {'none': None, '100Hz': 0.01, '1kHz': 0.001}, []
    for rep in range(reps):
        budget.check(3 * scale * 2.0 + 5, 'overhead')
        order = list(conds); random.shuffle(order)
        for c in order:
            m = Meter(sensors, period_s=conds[c], sync=sync).start() if conds[c] else None
            t = time.perf_counter(); wl.run(n); dt = time.perf_counter() - t
            if m: m.stop()
            rows.append(dict(repetition=rep, condition=c, seconds=dt, matmuls=n, flop_per_s=n * wl.flop_per_matmul / dt))
    full = sorted({r['repetition'] for r in rows})
    by = {c: [r['seconds'] for r in rows if r['condition'] == c] for c in conds}
    summary = {c: spread(a / b for a, b in zip(by['none'], by[c])) for c in ('100Hz', '1kHz')}  # throughput ratios
    return rows, dict(summary, repetitions=len(full))


def section_model(sensors, device, sync, quick, scale, budget):
    "The built-in model's greedy generation under the meter."
    from energytok.model import ByteTokenizer, builtin_meta, generate, load_builtin
    model = load_builtin(device, 'bf16' if device.startswith('cuda') else 'fp32')
    prompt = ByteTokenizer().encode('In the beginning was the Word, and the Word was with God, and the Word was God.')
    max_len = builtin_meta()['config']['max_seq_len']
    batch, new_tokens = (4, 16) if quick else (64, max_len - len(prompt))
    prompts = [prompt] * batch
    t = time.perf_counter(); generate(model, prompts, new_tokens)  # warm-up, and the time of one generation
    if sync: sync()
    one_s = time.perf_counter() - t
    repeats = max(1, round(scale * 2.0 / one_s))  # windows of about 2 s
    rows = []
    with Meter(sensors, period_s=0.01, sync=sync) as m:
        for k in range(1 if quick else 3):
            budget.check(repeats * one_s + 5, 'builtin_model')
            with m.window(f'generate-{k}') as w: toks = sum(len(o) for _ in range(repeats) for o in generate(model, prompts, new_tokens))
            row = window_row(w.result, 'builtin-generate', None, 0.01)
            row.update(batch_size=batch, new_tokens=new_tokens, generations=repeats, generated_tokens=toks,
                       tokens_per_s=toks / w.result.duration_s, j_per_token=None if w.result.energy_j is None else w.result.energy_j / toks)
            rows.append(row)
    return rows


def build_llm(folder, config, device, dtype):
    "Write a random-initialised Llama of `config` and a byte-level tokenizer to `folder`; its parameter count."
    import torch, transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**config)
    with torch.device(device): model = transformers.LlamaForCausalLM(cfg).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    if device.startswith('cuda'): torch.cuda.empty_cache()
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # 256 symbols, one per byte: every text encodes, no training needed
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(folder)
    return n_params


LLM_COLUMNS = ('model', 'dtype', 'batch_size', 'prompt_tokens', 'new_tokens', 'repetition', 'decode_tokens', 'total_tokens',
               'duration_s', 'tokens_per_s', 'energy_j', 'prefill_energy_j', 'decode_energy_j', 'j_per_token',
               'prefill_j_per_token', 'decode_j_per_token', 'avg_power_w', 'energy_provenance', 'estimated', 'device_name',
               'power_limit_w', 'temp_before_c', 'temp_after_c', 'flags')


def energytok_command():
    "How to call the `energytok` command: the console script if installed, else the same entry point through Python."
    import shutil
    exe = shutil.which('energytok')
    return [exe] if exe else [sys.executable, '-c', 'import sys; from energytok.cli import main; sys.exit(main())']


def section_llm(device, quick, dry, budget):
    "A ~1.2 B-parameter random Llama through `energytok run --model FOLDER` at two batch sizes; rows and a summary."
    import importlib.util
    if importlib.util.find_spec('transformers') is None: raise Skip('transformers is not installed')
    import torch
    on_gpu = device.startswith('cuda')
    config, dtype = (LLM_TINY, 'fp32') if dry or not on_gpu else (LLM_1B, 'bf16')
    batches, reps = ((2, 4) if dry else (8, 64)), (1 if quick or dry else 3)
    prompt_tokens, new_tokens = (16, 8) if dry else (128, 128)
    with tempfile.TemporaryDirectory(prefix='energytok-llm-') as tmp:
        folder = Path(tmp) / ('llama-1b-random' if config is LLM_1B else 'llama-tiny-random')
        budget.check(60 if on_gpu else 20, 'llm_1b')
        t = time.perf_counter()
        n_params = build_llm(folder, config, device, torch.bfloat16 if dtype == 'bf16' else torch.float32)
        build_s = time.perf_counter() - t
        cmd = energytok_command() + ['run', '--model', str(folder), '--dtype', dtype, '--batch-size', ','.join(map(str, batches)),
                                     '--prompt-tokens', str(prompt_tokens), '--new-tokens', str(new_tokens), '--repetitions', str(reps),
                                     '--warmup', '1', '--device', device, '--out', str(Path(tmp) / 'runs'), '--name', 'llm', '--quiet']
        left = budget.left_s() - 15
        if left < 30: raise BudgetSpent(f'llm_1b: {left:.0f} s left, too little for energytok run')
        t = time.perf_counter()
        try: res = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired as e: res = None; out_text = f"energytok run stopped after {left:.0f} s (budget)\n{e.stdout or ''}"
        else: out_text = res.stdout + res.stderr
        run_s = time.perf_counter() - t
        print(out_text[-3000:])
        rows = [{k: rec.get(k) for k in LLM_COLUMNS} for p in sorted(Path(tmp, 'runs').glob('*/runs.jsonl'))
                for rec in (json.loads(line) for line in p.read_text().splitlines() if line.strip())]
    if not rows: raise RuntimeError(f"energytok run wrote no record (exit {None if res is None else res.returncode}): {out_text[-800:]}")
    summary = {}
    for b in batches:
        rs = [r for r in rows if r['batch_size'] == b]
        summary[str(b)] = dict(runs=len(rs), j_per_token=spread(r['j_per_token'] for r in rs),
                               avg_power_w=spread(r['avg_power_w'] for r in rs), tokens_per_s=spread(r['tokens_per_s'] for r in rs),
                               provenance=sorted({r['energy_provenance'] for r in rs}), estimated=any(r['estimated'] for r in rs))
    return rows, dict(params=n_params, config=config, dtype=dtype, device=device, batch_sizes=list(batches), repetitions=reps,
                      prompt_tokens=prompt_tokens, new_tokens=new_tokens, build_s=build_s, run_s=run_s,
                      exit_code=None if res is None else res.returncode, summary=summary)


def mlenergy_comparison(llm, csv_path, gpus=('H100',)):
    "Our J/token per billion parameters against the ML.ENERGY Leaderboard's dense bf16 one-GPU models at the nearest batch."
    rows = [r for r in csv.DictReader(open(csv_path)) if r['architecture'] == 'Dense Transformer' and r['weight_precision'] == 'bfloat16'
            and r['num_gpus'] == '1' and r['gpu_model'] in gpus]
    if not rows: return dict(error=f'{csv_path}: no dense bf16 one-GPU rows on {gpus}')
    smallest = min(float(r['activated_params_billions']) for r in rows)
    ref = [r for r in rows if float(r['activated_params_billions']) == smallest]
    out = dict(source='ML.ENERGY Leaderboard v3 (vLLM, steady state, NVML counters)', reference_gpus=list(gpus),
               reference_models=sorted({r['model_id'] for r in ref}), reference_params_b=smallest, ours_params_b=llm['params'] / 1e9,
               rule='same order of magnitude: 0.1 <= ours / reference <= 10, both in J/token per billion active parameters',
               by_batch={})
    for b, s in llm['summary'].items():
        if not s['j_per_token']: continue
        if s['estimated']:
            out['by_batch'][b] = dict(not_compared='energy estimated, not measured: an estimate is not compared with measurements')
            continue
        near = min(ref, key=lambda r: (abs(float(r['max_num_seqs']) - int(b)), r['model_id'], r['task']))
        at = [r for r in ref if r['max_num_seqs'] == near['max_num_seqs']]
        ref_jpt = statistics.median(float(r['energy_per_token_joules']) for r in at)
        ours = s['j_per_token']['median'] / (llm['params'] / 1e9)
        theirs = ref_jpt / smallest
        out['by_batch'][b] = dict(ours_j_per_token=s['j_per_token']['median'], ours_j_per_token_per_b=ours,
                                  reference_max_num_seqs=int(near['max_num_seqs']), reference_rows=len(at), reference_j_per_token=ref_jpt,
                                  reference_j_per_token_per_b=theirs, ratio=ours / theirs,
                                  same_order_of_magnitude=0.1 <= ours / theirs <= 10)
    return out


def section_multi_gpu(sensors, s_per_mm, budget, scale, dry):
    "A matmul on GPU 0 alone: GPU 0's power must rise, the others' stay near their idle."
    import torch
    if len(sensors) < 2: raise Skip(f'{len(sensors)} GPU metered: needs more than one')
    budget.check(15 * scale + 10, 'multi_gpu')
    device = 'cpu' if dry else 'cuda:0'
    wl = Workload(device, 8192 if not dry else 256, torch.bfloat16 if not dry else torch.float32)
    sync = None if dry else (lambda: torch.cuda.synchronize(0))
    with Meter(sensors, period_s=0.01, sync=sync) as m:
        with m.window('idle') as wi: time.sleep(3 * scale)
        with m.window('gpu0-matmul') as wl_w: wl.run_for(5 * scale, s_per_mm, budget, 'multi_gpu')
    mean_w = lambda r: {d: None if e is None else e / r.duration_s for d, e in r.energy_by_domain_j.items()}
    idle_w, load_w = mean_w(wi.result), mean_w(wl_w.result)
    rise = {d: None if load_w[d] is None or idle_w.get(d) is None else load_w[d] - idle_w[d] for d in load_w}
    target = sensors[0].domain
    others_ok = all(rise[d] is not None and abs(rise[d]) <= max(10.0, 0.1 * idle_w[d]) for d in rise if d != target)
    return dict(idle_w=idle_w, load_w=load_w, rise_w=rise, target=target,
                target_rose=rise.get(target) is not None and rise[target] > max(20.0, 0.2 * idle_w[target]), others_near_idle=others_ok,
                rule='GPU 0 rises by more than max(20 W, 20% of its idle); every other GPU within max(10 W, 10% of its idle)')


# ---- driver ------------------------------------------------------------------------------------------------------
def run_section(results, name, fn, out):
    "Run one section: its result, or its error, goes into results.json, which is rewritten at once."
    t = time.perf_counter()
    try:
        results[name] = fn()
        status = dict(status='ok')
    except Skip as e: status = dict(status='skipped', reason=str(e))
    except BudgetSpent as e: status = dict(status='budget', reason=str(e))
    except Exception as e:
        status = dict(status='failed', error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=6)[-2000:])
    status['elapsed_s'] = time.perf_counter() - t
    results['sections'][name] = status
    write_results(out, results)
    print(f"[{name}] {status['status']} in {status['elapsed_s']:.1f} s" + (f": {status.get('reason') or status.get('error')}" if status['status'] != 'ok' else ''),
          flush=True)
    return status['status'] == 'ok'


def write_results(out, results):
    tmp = out / 'results.json.tmp'
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, out / 'results.json')


def summary_lines(results):
    "The short table printed last (the device tool returns the end of the output)."
    lines = []
    ag = results.get('agreement')
    if ag: lines.append(f"counter vs polling |discrepancy|: all windows {pct(ag['abs_discrepancy_all'])}; windows >= 2 s {pct(ag['abs_discrepancy_windows_ge_2s'])}")
    if ag and 'gap_within_uncertainty' in ag:
        lines.append(f"counter-polling gap within the two figures' stated uncertainties: {ag['gap_within_uncertainty']} windows; "
                     f"gap / allowed {ag['gap_over_allowed']}")
    for s in results.get('sampler', []):
        achieved = 'n/a' if s.get('achieved_period_s') is None else f"{s['achieved_period_s'] * 1e3:.3f} ms"
        lines.append(f"sampler at {1 / s['period_s']:.0f} Hz: achieved period {achieved}, p99 jitter {s['jitter_p99_s'] * 1e6:.0f} us, {s['overruns']} overruns")
    cu = results.get('counter_update')
    if cu: lines.append(f"energy counter refresh: observed {cu['counter_update_s']} s (assumed {cu['assumed_s']} s)")
    for i in results.get('idle', []):
        lines.append(f"idle settle ({i['period_s']:g} s sampler): {'settled' if i['settled'] else 'NOT settled'} after {i['settle_s']:.1f} s at {i['power_w']} W")
    if results.get('scope'): lines.append(f"scope: {results['scope'].get('verdict')}")
    if results.get('overhead_throughput_ratio'):
        lines.append('throughput ratio with sampler / without, median (IQR): ' + ', '.join(
            f"{k} {v['median']:.4f} ({v['q1']:.4f}-{v['q3']:.4f})" for k, v in results['overhead_throughput_ratio'].items() if isinstance(v, dict)))
    llm = results.get('llm_1b')
    if llm:
        for b, s in llm['summary'].items():
            jpt = 'n/a' if not s['j_per_token'] else f"{s['j_per_token']['median']:.4g}"
            lines.append(f"LLM {llm['params'] / 1e9:.2f} B {llm['dtype']} batch {b}: {jpt} J/token "
                         f"over {s['runs']} runs ({'+'.join(s['provenance'])}{', ESTIMATED' if s['estimated'] else ''})")
    cmp_ = results.get('mlenergy')
    if cmp_ and 'by_batch' in cmp_:
        for b, c in cmp_['by_batch'].items():
            if 'ratio' not in c: lines.append(f"  vs ML.ENERGY, batch {b}: {c.get('not_compared')}"); continue
            lines.append(f"  vs ML.ENERGY ({', '.join(cmp_['reference_models'])} at max_num_seqs {c['reference_max_num_seqs']}), per B params: "
                         f"ratio {c['ratio']:.2f} ({'same' if c['same_order_of_magnitude'] else 'NOT the same'} order of magnitude)")
    mg = results.get('multi_gpu')
    if mg: lines.append(f"multi-GPU: {mg['target']} rose {mg['rise_w'][mg['target']]} W ({'ok' if mg['target_rose'] else 'NO RISE'}); "
                        f"others near idle: {mg['others_near_idle']}")
    for name, s in results['sections'].items():
        if s['status'] != 'ok': lines.append(f"section {name}: {s['status']} ({s.get('reason') or s.get('error')})")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('out_dir', help='folder to write results.json and the CSV files to')
    p.add_argument('--quick', action='store_true', help='fewer and shorter windows (about a minute and a half)')
    p.add_argument('--dry-run-fake', action='store_true',
                   help='no GPU: two FakeNVML stand-ins and a CPU matmul; exercises the script, measures nothing')
    p.add_argument('--budget-s', type=float, default=BUDGET_S, help='time budget of the whole script, s')
    p.add_argument('--reference', default=None, help="the ML.ENERGY CSV (../shared/reference/mlenergy_llm_v3.csv) to compare the LLM with")
    p.add_argument('--compare-only', action='store_true', help="only add the ML.ENERGY comparison to OUT_DIR/results.json")
    a = p.parse_args(argv)
    out = Path(a.out_dir)
    if a.compare_only:
        if not a.reference: p.error('--compare-only needs --reference CSV')
        results = json.loads((out / 'results.json').read_text())
        if not results.get('llm_1b'): print('gpu_validation: results.json has no llm_1b section to compare', file=sys.stderr); return 2
        results['mlenergy'] = mlenergy_comparison(results['llm_1b'], a.reference)
        write_results(out, results)
        print('\n'.join(summary_lines(results)))
        return 0
    budget = Budget(a.budget_s)
    nvml = dry_run_nvml() if a.dry_run_fake else None
    try: import torch
    except ImportError: torch = None
    device = 'cpu' if a.dry_run_fake else 'cuda:0'
    if torch is not None and device.startswith('cuda') and torch.cuda.is_available(): torch.cuda.init()  # NVML's mapping checked against CUDA's
    sel = select(nvml)
    if not sel.sensors:
        print(f"gpu_validation: no NVIDIA GPU visible, nothing to validate ({'; '.join(s.reason for s in sel.statuses)})", file=sys.stderr)
        return 2
    if torch is None:
        print(f"gpu_validation: torch is not installed for {sys.executable}: the workloads need it", file=sys.stderr)
        return 2
    if device.startswith('cuda') and not torch.cuda.is_available():
        print("gpu_validation: NVML sees a GPU but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    def on_term(signum, frame): raise Stopped(f'stopped by signal {signum}')
    signal.signal(signal.SIGTERM, on_term)
    scale = 0.1 if a.dry_run_fake else 1.0  # a dry run only exercises the code: shorter everything
    gpu0 = select(nvml, [0]).sensors  # the GPU the matmul runs on; the multi-GPU section meters all of them
    nv = gpu0[0].nv
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith('cuda') else None
    results = dict(sections={}, environment=dict(
        dry_run=a.dry_run_fake, energytok_version=energytok.__version__, torch_version=torch.__version__, cuda_version=torch.version.cuda,
        hostname=platform.node(), python=platform.python_version(), budget_s=a.budget_s, argv=sys.argv[1:],
        device=torch.cuda.get_device_name(0) if device.startswith('cuda') else 'cpu (dry run)',
        cuda_device_count=torch.cuda.device_count() if device.startswith('cuda') else 0,
        gpu_selection=sel.to_dict(), sensors=[s.info() for s in sel.sensors],
        temperature_before_c={s.domain: s.temperature_c() for s in sel.sensors}))
    write_results(out, results)
    try:
        state = {}
        def setup():
            wl = Workload(device, 8192 if device.startswith('cuda') else 256, torch.bfloat16 if device.startswith('cuda') else torch.float32)
            state.update(wl=wl, s_per_mm=wl.calibrate(max(0.2, scale * (0.5 if a.quick else 2.0))))
            return dict(size=wl.size, dtype=str(wl.a.dtype), seconds_per_matmul=state['s_per_mm'], flop_per_s=wl.flop_per_matmul / state['s_per_mm'])
        run_section(results, 'matmul', setup, out)
        print(f"GPUs: {sel}; matmul: {results.get('matmul')}", flush=True)
        run_section(results, 'nvml_calls', lambda: section_nvml_calls(nv, gpu0[0].handle), out)
        if 'wl' in state:
            wl, s_per_mm = state['wl'], state['s_per_mm']
            run_section(results, 'counter_update', lambda: section_counter_update(gpu0[0], wl, s_per_mm, budget, scale), out)
            results['idle'] = []
            def windows():
                rows, sampler, last = section_windows(gpu0, wl, s_per_mm, a.quick, sync, scale, budget, results['idle'])
                write_csv(out / 'windows.csv', rows)
                if last is not None: last.trace().to_csv(out / 'trace_matmul.csv', index=False)
                disc = [w[k] for w in rows for k in w if k.endswith('_discrepancy') and w[k] is not None and w['workload'] == 'matmul']
                long_disc = [w[k] for w in rows if (w['target_s'] or 0) >= 2 * scale for k in w if k.endswith('_discrepancy') and w[k] is not None]
                within = [w[k] for w in rows for k in w if k.endswith('_gap_within_uncertainty') and w[k] is not None]
                over = [w[k] for w in rows for k in w if k.endswith('_gap_over_allowed') and w[k] is not None]
                results.update(sampler=sampler, agreement=dict(  # (polling - counter) / counter, per window
                    abs_discrepancy_all=spread(map(abs, disc)), abs_discrepancy_windows_ge_2s=spread(map(abs, long_disc)),
                    gap_within_uncertainty=f"{sum(within)} of {len(within)}", gap_over_allowed=spread(over)))
                state['windows'] = rows
                return dict(rows=rows)
            run_section(results, 'windows', windows, out)
            if 'windows' in state:
                run_section(results, 'scope', lambda: dict(scope_check(state['windows'], gpu0[0].domain, min_s=0.9 * scale),
                                                            field_scopes=field_scopes(nv, gpu0[0].handle)), out)
        run_section(results, 'multi_gpu', lambda: section_multi_gpu(sel.sensors, state.get('s_per_mm', 1e-3), budget, scale, a.dry_run_fake), out)
        def llm():
            rows, info = section_llm(device, a.quick, a.dry_run_fake, budget)
            write_csv(out / 'llm.csv', rows)
            if a.reference and Path(a.reference).exists(): results['mlenergy'] = mlenergy_comparison(info, a.reference)
            elif a.reference: results['mlenergy'] = dict(error=f'{a.reference} not found: compare later with --compare-only')
            return info
        run_section(results, 'llm_1b', llm, out)
        def model():
            rows = section_model(gpu0, device, sync, a.quick, scale, budget)
            write_csv(out / 'model.csv', rows)
            return rows
        run_section(results, 'builtin_model', model, out)
        if 'wl' in state:
            def overhead():
                rows, ov = section_overhead(gpu0, wl, s_per_mm, 3 if a.quick else 7, sync, scale, budget)
                write_csv(out / 'overhead.csv', rows)
                results['overhead_throughput_ratio'] = {k: v for k, v in ov.items() if k != 'repetitions'}
                return ov
            run_section(results, 'overhead', overhead, out)
    except (BudgetSpent, Stopped) as e:
        results['sections']['stopped'] = dict(status='stopped', reason=str(e))
    finally:
        results['environment']['temperature_after_c'] = {s.domain: s.temperature_c() for s in sel.sensors}
        results['elapsed_s'] = budget.elapsed_s()
        write_results(out, results)
    print('\n'.join(summary_lines(results)))
    if a.dry_run_fake: print("DRY RUN with FakeNVML stand-ins: these numbers are not measurements")
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out} in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
