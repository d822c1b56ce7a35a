"""The CPU estimate says what it is: codecarbon's own load model (checked against codecarbon), a stated TDP and idle
power, this process's CPU time with `share='process'`, a cumulative counter rebuilt in the sampler process for the
same process, and the wording in `energytok sensors`, `energytok run`, cards and reports."""
import contextlib, io, json, os, pickle, time
from pathlib import Path

import pytest

from energytok.cli import main
from energytok.sensors import (CodecarbonCPUEstimate, ESTIMATE_NOTES, _FixedLoad, codecarbon_cpu_tdp, estimate_note,
                               estimate_status)

TINY = ['--batch-size', '1', '--new-tokens', '8', '--prompt-tokens', '16', '--dtype', 'fp32', '--warmup', '0',
        '--repetitions', '2', '--quiet']


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(map(str, argv)))
    return rc, out.getvalue(), err.getvalue()


def test_machine_share_is_codecarbons_model_at_the_measured_load():
    with contextlib.redirect_stderr(io.StringIO()):
        from codecarbon.external.hardware import CPU, MODE_CPU_LOAD
    est = CodecarbonCPUEstimate()
    cc = CPU(output_dir='/tmp', mode=MODE_CPU_LOAD, model=est.tdp['cpu_model'], tdp=est.tdp['tdp_w'], tracking_mode='machine')
    for pct in (0.0, 25.0, 70.0, 100.0):
        est._load.inner = _FixedLoad(pct); cc._cpu_load_meter = _FixedLoad(pct)
        assert est.read().power_w == pytest.approx(cc._get_power_from_cpu_load().W)
        assert est.method()['load_fraction'] == pytest.approx(pct / 100)


def test_a_stated_tdp_and_idle_power_keep_codecarbons_curve_between_them():
    info = codecarbon_cpu_tdp()
    est = CodecarbonCPUEstimate(tdp_w=95.0, idle_w=30.0, tdp_info=info)
    ref = CodecarbonCPUEstimate(tdp_w=95.0, tdp_info=info)
    powers = []
    for pct in (0.0, 50.0, 100.0):
        est._load.inner = ref._load.inner = _FixedLoad(pct)
        powers.append((est.read().power_w, ref.read().power_w))
    assert powers[0][0] == pytest.approx(30.0) and powers[-1][0] == pytest.approx(95.0) and powers[-1][1] == pytest.approx(95.0)
    lo, hi = powers[0][1], powers[-1][1]
    assert (powers[1][0] - 30) / 65 == pytest.approx((powers[1][1] - lo) / (hi - lo))  # the same place on the curve
    m = est.method()
    assert m['tdp_source'].startswith('given') and m['idle_source'].startswith('given') and m['share'] == 'machine'


@pytest.mark.parametrize('kwargs, match', [(dict(share='gpu'), "share: expected one of"), (dict(tdp_w=-1), 'tdp_w'),
                                           (dict(idle_w=9e9), 'idle_w: expected 0 <= idle_w < tdp_w'),
                                           (dict(share='process', idle_w=1.0), "idle_w: only with share='machine'"),
                                           (dict(load_period_s=-0.1), 'load_period_s')])
def test_bad_options_are_refused_naming_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match): CodecarbonCPUEstimate(**kwargs)
    with pytest.raises(ValueError, match=match): estimate_status(**kwargs)


def test_process_share_is_proportional_to_this_processes_cpu_time():
    info = codecarbon_cpu_tdp()
    est = CodecarbonCPUEstimate(share='process', tdp_w=64.0, tdp_info=info)
    r0, c0 = est.read(), time.process_time()
    while time.process_time() - c0 < 0.4: sum(i for i in range(1000))
    time.sleep(0.2)  # sleeping costs no CPU time, so no energy
    r1, c1 = est.read(), time.process_time()
    per_cpu_s = 64.0 / info['threads']
    assert r1.energy_j - r0.energy_j == pytest.approx((c1 - c0) * per_cpu_s, abs=0.03 * per_cpu_s)
    assert est.provenance == 'estimate:process-cpu-time' and est.has_counter and est.estimated
    assert est.resolution_j == pytest.approx(0.01 * per_cpu_s)


def test_the_estimate_is_rebuilt_for_the_same_process_without_codecarbons_lookup():
    est = CodecarbonCPUEstimate(share='process', tdp_w=40.0)
    again = pickle.loads(pickle.dumps(est.factory()))()
    assert (again.pid, again.share, again.tdp, again.min_read_period_s) == (os.getpid(), 'process', est.tdp, 0.1)


def test_the_wording_says_proportional_to_cpu_time():
    assert set(ESTIMATE_NOTES) == {'estimate:codecarbon-cpu-load', 'estimate:process-cpu-time'}
    for p, note in ESTIMATE_NOTES.items():
        assert 'proportional to' in note and 'comparisons of' in note and estimate_note(f'rapl+{p}') == note
    assert estimate_note('nvml-energy-counter') == ''
    st = estimate_status(share='process')
    assert st.present and 'proportional to this process' in st.reason and st.provenance == 'estimate:process-cpu-time'
    rc, out, err = cli('sensors')
    assert rc == 0 and 'proportional to CPU time' in out


def test_card_and_report_say_what_the_estimate_is():
    import pandas as pd
    from energytok.card import energy_card, simulated_records
    from energytok.report import compare_runs
    from energytok.stats_describe import simulate_runs
    recs = simulated_records(simulate_runs({'dtype': {'fp32': 1.0, 'bf16': 0.8}}, n_reps=4, seed=2))
    recs['energy_provenance'] = 'estimate:process-cpu-time'
    card = energy_card(recs[recs.dtype == 'fp32'])
    assert any('proportional to this process' in n for n in card.notes)
    assert any(n.startswith('J/token uncertainty: the spread across runs dominates') for n in card.notes)
    md = compare_runs(recs, by='dtype', figures=False, cards=False).to_markdown()
    assert 'proportional to this process' in md and 'measurement_u' in md and 'run-to-run' in md


def test_energytok_run_with_a_stated_tdp_and_the_process_share(tmp_path):
    # CPU time is accounted in kernel ticks (10 ms): a window of a few ms may rightly estimate 0 J, flagged with its
    # uncertainty; 224 tokens at batch 8 keep the decode window well above a tick even on a fast CI machine.
    rc, out, err = cli('run', *TINY, '--batch-size', '8', '--new-tokens', '224', '--cpu-tdp-w', '50', '--cpu-share', 'process', '--out', tmp_path, '--name', 'cpu')
    assert rc == 0, err
    recs = [json.loads(l) for f in tmp_path.rglob('runs.jsonl') for l in f.read_text().splitlines()]
    assert len(recs) == 2
    for r in recs:
        assert r['energy_provenance'] == 'estimate:process-cpu-time' and r['estimated'] is True
        assert r['energy_j'] > 0 and 0 < r['energy_uncertainty_j'] and r['j_per_token_uncertainty'] == pytest.approx(
            r['energy_uncertainty_j'] / r['decode_tokens'])
    assert 'proportional to this process' in out


def test_a_window_under_one_cpu_tick_is_flagged_not_shown_as_exact(tmp_path):
    rc, out, err = cli('run', *TINY, '--cpu-tdp-w', '50', '--cpu-share', 'process', '--out', tmp_path, '--name', 'cpu')
    assert rc == 0, err
    for r in (json.loads(l) for f in tmp_path.rglob('runs.jsonl') for l in f.read_text().splitlines()):
        assert r['energy_j'] >= 0 and r['energy_uncertainty_j'] > 0
        assert any(f.startswith('prefill:short-window:cpu-estimate') for f in r['flags'])
        if r['energy_j'] < r['energy_uncertainty_j']: assert any('uncertain:cpu-estimate' in f for f in r['flags'])


@pytest.mark.parametrize('args, msg', [(['--cpu-share', 'gpu'], 'cpu_share: expected one of'),
                                       (['--cpu-tdp-w', '-5'], 'cpu_tdp_w: expected a finite number > 0'),
                                       (['--cpu-tdp-w', '20', '--cpu-idle-w', '30'], 'cpu_idle_w: expected 0 <= idle_w < tdp_w'),
                                       (['--cpu-idle-w', '3', '--cpu-share', 'process'], "cpu_idle_w: only with share='machine'")])
def test_bad_cpu_flags_are_refused_in_one_line(tmp_path, args, msg):
    rc, out, err = cli('run', *TINY, *args, '--out', tmp_path)
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and msg in lines[0] and 'Traceback' not in err
