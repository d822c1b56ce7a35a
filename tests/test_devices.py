"""Which devices count: runs, sweeps, `%%joules`, bench-serve and torch.distributed nodes meter the GPUs the work uses.

No GPU exists here: every GPU is the strict NVML stand-in (`FakeNVML`), and torch's CUDA calls are monkeypatched only so
that a configuration on `cuda:N` is accepted. NVML's GPU i of the stand-in draws (i + 1) x 100 W, so the energy of a run
says which GPUs it came from."""
import json, os, subprocess, sys, time
from pathlib import Path
import pytest
import torch

from energytok.harness import CallableBackend, RunConfig
from energytok.meter import Meter
from energytok.nvml import FakeNVML, nvml_statuses
from energytok.sensors import SENSOR_KINDS, available_sensors, sensor_kinds
from energytok.store import load_runs, make_record, RUN_COLUMNS, DEVICE_COLUMNS
from energytok.workload import Sweep, run_sweep, format_summary, devices_notice

ROOT = Path(__file__).resolve().parents[1]
NO_RAPL = '/nonexistent/powercap'
H100 = 'NVIDIA H100 80GB HBM3'


def four_gpus(over:dict=None) -> FakeNVML:
    "Four stand-in H100s, NVML's GPU i at (i + 1) x 100 W, counters refreshed continuously (the energy of a short run is exact)."
    return FakeNVML([dict(name=H100, power_w=100.0 * (i + 1), counter_update_s=0, **(over or {}).get(i, {})) for i in range(4)])


@pytest.fixture
def cuda4(monkeypatch):
    "torch says it sees four CUDA GPUs (the stand-in's); synchronize does nothing."
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: None)


def lm(config):
    "A streaming callable on the configuration's device: 10 ms a step, token i at step i."
    def stream(prompts, n):
        for i in range(n):
            time.sleep(0.01)
            yield [i % 256] * len(prompts)
    return CallableBackend(stream, name='lm', device=config.device, dtype=config.dtype)


def sweep(tmp_path, name, factors=None, device='cuda:1', nvml=None, env=None, repetitions=1, **kw):
    "A small sweep of the callable on the stand-in node; its records."
    sw = Sweep(factors or {'batch_size': [1, 2]}, repetitions=repetitions, warmup=0, name=name,
               base={**({} if factors and 'device' in factors else dict(device=device)), 'model': 'lm', 'new_tokens': 20})
    opts = dict(nvml=nvml, env=env if env is not None else {'CUDA_VISIBLE_DEVICES': '2,3,0,1'}, rapl_root=NO_RAPL)
    return run_sweep(sw, tmp_path, backends={'lm': lm}, sensor_options={**opts, **kw.pop('sensor_options', {})}, progress=False, **kw).runs()


def uuids(devices) -> list: return [d['uuid'] for d in devices]


# ---- energytok run: the devices of each configuration -----------------------------------------------------------------
def test_a_run_on_cuda_1_meters_that_gpu_and_lists_the_others(tmp_path, cuda4):
    "CUDA_VISIBLE_DEVICES=2,3,0,1 makes cuda:1 NVML's GPU 3 (400 W): exactly that GPU is metered, the other three listed."
    fake = four_gpus()
    env = {'CUDA_VISIBLE_DEVICES': '2,3,0,1'}
    df = sweep(tmp_path, 'one', nvml=fake, env=env)
    assert len(df) == 2 and set(df.device) == {'cuda:1'}
    for _, r in df.iterrows():
        assert set(r.energy_by_domain_j) == {'gpu:1'} and r.energy_provenance == 'nvml-energy-counter' and not r.estimated
        assert r.avg_power_w == pytest.approx(400.0, rel=0.05)  # GPU 3's power, not the node's 1000 W
        assert r.n_devices == 1
        (m,) = r.metered_devices
        assert (m['index'], m['nvml_index'], m['uuid'], m['name'], m['power_limit_w']) == (1, 3, 'GPU-fake-3', H100, 700.0)
        assert m['uuid'] == fake.cuda_device_uuids(env)[1]  # the stand-in's own model of CUDA agrees
        assert [(d['index'], d['nvml_index'], d['uuid']) for d in r.unmetered_devices] == [(0, 2, 'GPU-fake-2'), (2, 0, 'GPU-fake-0'),
                                                                                          (3, 1, 'GPU-fake-1')]
        assert (r.device_name, r.power_limit_w) == (H100, 700.0)


def test_mixed_speed_gpus_are_numbered_as_cuda_numbers_them(tmp_path, cuda4):
    "Two A100s and two H100s: without CUDA_DEVICE_ORDER the ordinal cannot be mapped from NVML, so the run is refused; with it, or with CUDA's own list, the right GPU is metered."
    fake = FakeNVML([dict(name='NVIDIA A100-SXM4-80GB', speed=0.5, power_w=100.0, counter_update_s=0),
                     dict(name=H100, power_w=200.0, counter_update_s=0),
                     dict(name='NVIDIA A100-SXM4-80GB', speed=0.5, power_w=300.0, counter_update_s=0),
                     dict(name=H100, power_w=400.0, counter_update_s=0)])
    with pytest.raises(ValueError, match="gpus: \\[0\\] names GPUs to meter, but none can be metered here: .*cannot tell which GPU CUDA numbers first"):
        sweep(tmp_path, 'mixed', device='cuda:0', nvml=fake, env={})
    assert len(load_runs(tmp_path)) == 0  # refused before any run
    by_bus = {'CUDA_DEVICE_ORDER': 'PCI_BUS_ID'}
    df = sweep(tmp_path, 'bus', device='cuda:0', nvml=fake, env=by_bus)
    assert {uuids(m)[0] for m in df.metered_devices} == {fake.cuda_device_uuids(by_bus)[0]} == {'GPU-fake-0'}
    assert df.avg_power_w.tolist() == pytest.approx([100.0, 100.0], rel=0.05)
    df = sweep(tmp_path, 'fastest', device='cuda:0', nvml=fake, env={}, sensor_options=dict(cuda_uuids=lambda: fake.cuda_device_uuids({})))
    assert {uuids(m)[0] for m in df.metered_devices} == {fake.cuda_device_uuids({})[0]} == {'GPU-fake-1'}  # fastest first: an H100
    assert df.avg_power_w.tolist() == pytest.approx([200.0, 200.0], rel=0.05)


def test_a_model_on_two_gpus_meters_both(tmp_path, cuda4):
    "`cuda:0,2` behind 2,3,0,1 is NVML's GPUs 2 and 0 (300 W + 100 W); the two others are listed as not metered."
    df = sweep(tmp_path, 'two', device='cuda:0,2', nvml=four_gpus())
    for _, r in df.iterrows():
        assert set(r.energy_by_domain_j) == {'gpu:0', 'gpu:2'} and r.n_devices == 2
        assert uuids(r.metered_devices) == ['GPU-fake-2', 'GPU-fake-0'] and uuids(r.unmetered_devices) == ['GPU-fake-3', 'GPU-fake-1']
        assert r.avg_power_w == pytest.approx(400.0, rel=0.05)
        e = r.energy_by_domain_j
        assert e['gpu:0'] / e['gpu:2'] == pytest.approx(3.0, rel=0.05)
    assert 'metered: cuda:0 NVIDIA H100 80GB HBM3 (GPU-fake-2), cuda:2' in '\n'.join(devices_notice(df))


def test_a_sweep_over_devices_meters_each_run_on_its_own_gpus(tmp_path, cuda4):
    "cuda:0 (NVML 2, 300 W) and cuda:3 (NVML 1, 200 W) in one interleaved sweep: each record holds its own GPU's energy only."
    df = sweep(tmp_path, 'devs', factors={'device': ['cuda:0', 'cuda:3']}, nvml=four_gpus())
    assert len(df) == 2
    for _, r in df.iterrows():
        gpu = r.device.replace('cuda', 'gpu')
        assert set(r.energy_by_domain_j) == {gpu} and r.n_devices == 1
        assert r.avg_power_w == pytest.approx({'cuda:0': 300.0, 'cuda:3': 200.0}[r.device], rel=0.05)
        assert uuids(r.metered_devices) == [{'cuda:0': 'GPU-fake-2', 'cuda:3': 'GPU-fake-1'}[r.device]] and len(r.unmetered_devices) == 3


def test_each_meter_of_a_sweep_has_its_own_idle_baseline(tmp_path, cuda4):
    sw = Sweep({'device': ['cuda:0', 'cuda:3']}, repetitions=1, warmup=0, idle_s=0.1, name='idle', base=dict(model='lm', new_tokens=8))
    res = run_sweep(sw, tmp_path, backends={'lm': lm}, progress=False,
                    sensor_options=dict(nvml=four_gpus(), env={'CUDA_VISIBLE_DEVICES': '2,3,0,1'}, rapl_root=NO_RAPL))
    assert {k: round(v.power_w) for k, v in res.idle.items()} == {'0': 300, '3': 200}  # one meter per GPU, each its own idle
    df = res.runs()
    assert dict(zip(df.device, df.idle_power_w.round())) == {'cuda:0': 300.0, 'cuda:3': 200.0}


def test_gpus_overrides_the_choice_and_a_cpu_run_meters_no_gpu(tmp_path, cuda4):
    every = sweep(tmp_path, 'all', nvml=four_gpus(), gpus='all')
    assert set(every.n_devices) == {4} and all(u == [] for u in every.unmetered_devices)
    assert every.avg_power_w.tolist() == pytest.approx([1000.0, 1000.0], rel=0.05)
    cpu = sweep(tmp_path, 'cpu', device='cpu', nvml=four_gpus())
    assert set(cpu.n_devices) == {0} and all(len(u) == 4 for u in cpu.unmetered_devices)
    assert not any(k.startswith('gpu') for e in cpu.energy_by_domain_j for k in e)  # no GPU's energy in a CPU run
    assert 'visible, not metered: cuda:0, cuda:1, cuda:2, cuda:3' in devices_notice(cpu)[0]


@pytest.mark.parametrize('how, match', [('lost', 'NVML cannot open GPU 3'), ('mig', 'no energy counter or power reading per MIG instance')])
def test_a_gpu_the_run_uses_that_cannot_be_metered_stops_the_sweep(tmp_path, cuda4, how, match):
    fake = four_gpus({3: dict(mig=['MIG-aa', 'MIG-bb'])} if how == 'mig' else None)
    if how == 'lost': fake.lose_gpu(3)
    with pytest.raises(ValueError, match=f"gpus: \\[1\\] names gpu:1, which cannot be metered: gpu:1: .*{match}"):
        sweep(tmp_path, how, nvml=fake)
    assert len(load_runs(tmp_path)) == 0
    if how == 'mig':  # asked for, the parent GPU is metered, under its own name, with its instances listed
        df = sweep(tmp_path, 'parent', nvml=fake, sensor_options=dict(mig_parent=True))
        assert [d['mig_instances'] for d in df.metered_devices[0]] == [['MIG-aa', 'MIG-bb']]


def test_a_given_meter_names_its_devices_and_knows_none_left_out(tmp_path, cuda4):
    fake = four_gpus()
    meter = Meter(available_sensors('cuda:1', nvml=fake, env={'CUDA_VISIBLE_DEVICES': '2,3,0,1'}, rapl_root=NO_RAPL), period_s=0.01)
    sw = Sweep({'batch_size': [1]}, repetitions=1, warmup=0, base=dict(model='lm', device='cuda:1', new_tokens=8), name='given')
    df = run_sweep(sw, tmp_path, backends={'lm': lm}, meter=meter, progress=False).runs()
    assert uuids(df.metered_devices[0]) == ['GPU-fake-3'] and df.n_devices[0] == 1 and df.unmetered_devices[0] is None
    with pytest.raises(ValueError, match='gpus, sensor_options: choose the sensors of the meters run_sweep makes'):
        run_sweep(sw, tmp_path, backends={'lm': lm}, meter=meter, gpus='all')
    with pytest.raises(ValueError, match="chooses sensors, but `sensors` were given too"): Meter(meter.sensors, gpus='cuda:1')


def test_records_that_do_not_name_devices_still_build_and_load(tmp_path):
    rec = make_record(**{c: None for c in RUN_COLUMNS if c not in DEVICE_COLUMNS})
    assert all(rec[c] is None for c in DEVICE_COLUMNS)  # unknown, never 0 devices
    old = {k: v for k, v in rec.items() if k not in DEVICE_COLUMNS} | dict(run_id='old-1')
    (tmp_path/'runs.jsonl').write_text(json.dumps(old) + '\n')
    assert list(load_runs(tmp_path).columns) == list(RUN_COLUMNS)


def test_summaries_cards_and_reports_show_the_device_count(tmp_path, cuda4):
    from energytok.metrics import token_metrics
    from energytok.card import energy_card
    from energytok.report import compare_runs
    two = sweep(tmp_path, 'two', device='cuda:0,2', nvml=four_gpus(), repetitions=2)
    assert token_metrics(two).n_devices.tolist() == [2, 2]
    text = format_summary(two)
    assert 'GPUs' in text.splitlines()[0] and 'GPUs: devices metered per run' in text
    card = energy_card(two, by='batch_size', config=1, hardware='H100-SXM', active_params=1e9)
    assert card.hardware['n_devices'] == 2 and card.tpf['n_devices'] == 2 and 'devices metered: 2' in card.to_markdown()
    rep = compare_runs(two, 'j_per_token', 'batch_size', figures=False, cards=False, n_boot=200)
    assert rep.configs['devices'].tolist() == ['2', '2']


# ---- %%joules --gpus ----------------------------------------------------------------------------------------------------
@pytest.fixture
def stand_in_node(monkeypatch):
    "Discovery sees the four stand-in GPUs behind CUDA_VISIBLE_DEVICES=2,3,0,1, and no RAPL."
    fake = four_gpus()
    sensor_kinds()  # the built-in kinds registered, then replaced for the test
    monkeypatch.setitem(SENSOR_KINDS, 'nvml', lambda gpus=None: nvml_statuses(fake, env={'CUDA_VISIBLE_DEVICES': '2,3,0,1'}, gpus=gpus))
    monkeypatch.setitem(SENSOR_KINDS, 'rapl', lambda: [])
    return fake


def test_joules_gpus_meters_the_gpus_named(stand_in_node):
    from IPython.core.interactiveshell import InteractiveShell
    from energytok.magic import JoulesMagics
    shell = InteractiveShell.instance()
    shell.register_magics(JoulesMagics(shell))
    shell.run_cell_magic('joules', '--gpus 1 -o one -p 0.01 -q', 'import time; time.sleep(0.3)')
    r = shell.user_ns['one']
    assert list(r.energy_by_domain_j) == ['gpu:1'] and r.avg_power_w == pytest.approx(400.0, rel=0.05)
    shell.run_cell_magic('joules', '-g cuda:0,cuda:2 -o two -p 0.01 -q', 'time.sleep(0.3)')
    assert sorted(shell.user_ns['two'].energy_by_domain_j) == ['gpu:0', 'gpu:2'] and shell.user_ns['two'].avg_power_w == pytest.approx(400.0, rel=0.05)
    shell.run_cell_magic('joules', '-o every -p 0.01 -q', 'time.sleep(0.3)')  # without --gpus: every visible GPU
    assert shell.user_ns['every'].avg_power_w == pytest.approx(1000.0, rel=0.05)
    with pytest.raises(ValueError, match="gpus: 'cuda:4' is not a visible GPU"): shell.run_cell_magic('joules', '--gpus cuda:4', 'pass')
    stand_in_node.lose_gpu(3)
    with pytest.raises(ValueError, match='which cannot be metered'): shell.run_cell_magic('joules', '--gpus 1', 'pass')


# ---- bench-serve --gpus ---------------------------------------------------------------------------------------------------
def test_bench_serve_records_name_their_devices(tmp_path, stand_in_node):
    pytest.importorskip('httpx'); pytest.importorskip('starlette'); pytest.importorskip('uvicorn')
    from energytok.serve_client import ServerThread, fake_openai_app, Endpoint
    from energytok.serving import ServeBench, bench_serve, load_levels
    from energytok.cli import main
    with ServerThread(fake_openai_app(output_tokens=8, token_delay_s=0.01)) as srv:
        bench = ServeBench(Endpoint(srv.url), load_levels('1,2'), repetitions=1, num_prompts=8, max_tokens=8, warmup=0)
        one = bench_serve(bench, tmp_path/'one', gpus='1', progress=False).runs()
        every = bench_serve(bench, tmp_path/'every', progress=False).runs()
        assert main(['bench-serve', '--url', srv.url, '--concurrency', '1', '--num-prompts', '4', '--max-tokens', '4', '--repetitions', '1',
                     '--warmup', '0', '--gpus', 'cuda:0,cuda:2', '--out', str(tmp_path/'cli'), '--quiet']) == 0
        with pytest.raises(ValueError, match='the given meter has its own'):
            bench_serve(bench, tmp_path/'x', meter=Meter(period_s=0.01), gpus='1', progress=False)
    for _, r in one.iterrows():
        assert set(r.energy_by_domain_j) == {'gpu:1'} and r.n_devices == 1
        assert uuids(r.metered_devices) == ['GPU-fake-3'] and uuids(r.unmetered_devices) == ['GPU-fake-2', 'GPU-fake-0', 'GPU-fake-1']
        assert r.device_name == H100 and r.power_limit_w == 700.0
    assert set(every.n_devices) == {4} and all(u == [] for u in every.unmetered_devices)
    cli = load_runs(tmp_path/'cli')
    assert uuids(cli.metered_devices[0]) == ['GPU-fake-2', 'GPU-fake-0'] and cli.n_devices[0] == 2


# ---- torch.distributed: each node meters its ranks' GPUs ------------------------------------------------------------------
def test_a_node_meters_the_gpus_of_its_ranks_only():
    "Two ranks on a four-GPU node (torchrun, gloo): each uses cuda:LOCAL_RANK; behind 2,3,0,1 that is NVML's GPUs 2 and 3 (30 W + 40 W at 10 W a step)."
    env = {**os.environ, 'PYTHONPATH': str(ROOT/'tests'), 'ENERGYTOK_NODE_SENSORS': 'dist_job:fake_gpu_node', 'OMP_NUM_THREADS': '1',
           'TEST_NODE_POWER_W': '10', 'TEST_CUDA_VISIBLE': '2,3,0,1', 'TEST_FAKE_CUDA': '1', 'MPLBACKEND': 'Agg'}
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2', 'tests/dist_job.py'],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    (line,) = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    res = json.loads(line.removeprefix('RESULT '))
    dev = res['devices']
    assert [(d['node'], d['index'], d['uuid']) for d in dev['metered_devices']] == [('node0', 0, 'GPU-node-2'), ('node0', 1, 'GPU-node-3')]
    assert dev['n_devices'] == 2 and uuids(dev['unmetered_devices']) == ['GPU-node-0', 'GPU-node-1']
    w = res['second']
    assert sorted(w['energy_by_domain_j']) == ['node0/gpu:0', 'node0/gpu:1']
    assert w['avg_power_w'] == pytest.approx(70.0, rel=0.05)  # the node's other two GPUs (10 W, 20 W) are not in it
