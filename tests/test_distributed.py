"Distributed metering end to end: real torchrun jobs of CPU processes over gloo, one node or two simulated on localhost."
import json, os, signal, socket, subprocess, sys, threading, time
from pathlib import Path
import pytest
from energytok.store import load_runs

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run']  # `torchrun`, from this environment
ENERGYTOK = str(Path(sys.executable).parent/'energytok')
TINY_RUN = ['--batch-size', '1', '--new-tokens', '8', '--prompt-tokens', '16', '--repetitions', '2', '--warmup', '0',
            '--dtype', 'fp32', '--quiet']

def job_env(power_w=None, **extra) -> dict:
    "The environment of one simulated node: its replayed sensors (`tests/dist_job.py`), one thread per process."
    env = {**os.environ, 'PYTHONPATH': str(ROOT/'tests'), 'ENERGYTOK_NODE_SENSORS': 'dist_job:node_sensors', 'OMP_NUM_THREADS': '1',
           'MPLBACKEND': 'Agg'}
    if power_w is not None: env['TEST_NODE_POWER_W'] = str(power_w)
    return {**env, **{k: str(v) for k, v in extra.items()}}

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def torchrun(args, env, timeout_s=90) -> subprocess.CompletedProcess:
    return subprocess.run(TORCHRUN + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)

def two_nodes(cmd0, cmd1, env0, env1, nproc=1, rdzv='static', timeout_s=90, grace_s=5) -> list:
    "Two torchrun launchers on this machine as two nodes; their results. Static rendezvous puts rank 0 on node rank 0."
    port = free_port()
    how = (['--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{port}', '--rdzv-id', 'energytok-test'] if rdzv == 'c10d'
           else ['--master-addr', '127.0.0.1', '--master-port', str(port)])
    rank_of = lambda k: [] if rdzv == 'c10d' else ['--node-rank', str(k)]  # c10d ranks the nodes as they join
    ps = [subprocess.Popen(TORCHRUN + ['--nnodes', '2', '--nproc-per-node', str(nproc)] + rank_of(k) + how + cmd, env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
          for k, (cmd, env) in enumerate([(cmd0, env0), (cmd1, env1)])]
    outs = [([], []) for _ in ps]
    def read(stream, lines):
        for line in stream: lines.append(line)
    readers = [threading.Thread(target=read, args=(stream, o), daemon=True) for p, oe in zip(ps, outs) for o, stream in zip(oe, (p.stdout, p.stderr))]
    for t in readers: t.start()
    deadline, reported = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline and any(p.poll() is None for p in ps):
        if reported is None and any(l.startswith(('RESULT {', '{')) for o, _ in outs for l in o): reported = time.monotonic()
        if reported is not None and time.monotonic() > reported + grace_s: break  # after a node failed, torchrun's other
        time.sleep(0.1)                                                            # launchers wait minutes in their exit barrier
    for p in ps:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for t in readers: t.join(5)
    return [subprocess.CompletedProcess(p.args, p.returncode, ''.join(o), ''.join(e)) for p, (o, e) in zip(ps, outs)]

def result_of(*procs) -> dict:
    "The JSON line rank 0 printed, bare or after RESULT (whichever launcher holds it)."
    lines = [l.removeprefix('RESULT ') for p in procs for l in p.stdout.splitlines() if l.startswith(('RESULT {', '{'))]
    assert len(lines) == 1, [(p.returncode, p.stdout[-2000:], p.stderr[-3000:]) for p in procs]
    return json.loads(lines[0])

def test_energytok_run_two_ranks(tmp_path):
    "`energytok run` as two data-parallel replicas: one record per run with both ranks' tokens, the node's CPU counted once."
    p = torchrun(['--standalone', '--nproc-per-node', '2', '--no-python', ENERGYTOK, 'run', *TINY_RUN, '--out', str(tmp_path)],
                 job_env(10.0))
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count('records: ') == 1 and 'job: 2 rank(s) on 1 node(s)' in p.stdout  # rank 0 alone reports
    runs = load_runs(tmp_path)
    assert len(runs) == 2 and runs.run_id.is_unique  # one record per run, not one per rank
    assert list(runs.world_size) == [2, 2] and list(runs.n_nodes) == [1, 1]
    assert list(runs.decode_tokens) == [16, 16] and list(runs.prefill_tokens) == [32, 32]  # 2 replicas x 1 sequence
    assert [list(t) for t in runs.rank_tokens] == [[8, 8], [8, 8]]
    for e in runs.energy_by_domain_j: assert sorted(e) == ['node0/cpu:0-package', 'node0/gpu:0']
    assert runs.avg_power_w.tolist() == pytest.approx([40.0, 40.0], rel=0.02)  # 10 W + 30 W once, not once per rank
    assert list(runs.energy_provenance) == ['replay', 'replay'] and not runs.estimated.any()
    node = runs.nodes[0][0]
    assert (node['ranks'], node['sampler'], node['clock_offset_s']) == ([0, 1], 0, 0.0)

def test_tensor_parallel_example_two_nodes():
    "The tensor-parallel example over two nodes of two ranks (c10d rendezvous): energy of both nodes, each node's domains once."
    cmd = ['examples/tensor_parallel.py', '--json', '--steps', '100']
    p0, p1 = two_nodes(cmd, cmd, job_env(10.0), job_env(20.0), nproc=2, rdzv='c10d')
    assert (p0.returncode, p1.returncode) == (0, 0), (p0.stderr[-2000:], p1.stderr[-2000:])
    r = result_of(p0, p1)
    assert r['complete'] and all(f.startswith('edge-lag:') for f in r['flags']), r['flags']
    assert sorted(r['energy_by_domain_j']) == ['node0/cpu:0-package', 'node0/gpu:0', 'node1/cpu:0-package', 'node1/gpu:0']
    by_node = sorted(r['energy_by_node_j'].values())
    assert by_node[1] / by_node[0] == pytest.approx(2.0, rel=0.05)  # the 20 W node against the 10 W one
    assert r['avg_power_w'] == pytest.approx(40.0 + 80.0, rel=0.03)  # not doubled by the second rank of each node
    nodes = r['nodes']
    assert sorted(tuple(n['ranks']) for n in nodes.values()) == [(0, 1), (2, 3)]
    assert all(n['sampler'] == n['ranks'][0] for n in nodes.values())  # the lowest local rank samples
    remote = next(n for n in nodes.values() if 0 not in n['ranks'])
    assert remote['clock_uncertainty_s'] is not None and abs(remote['clock_offset_s']) <= remote['clock_uncertainty_s'] + 1e-3

def test_meter_agent_meters_its_node():
    "A load generator on node 0 that does not sample, and `energytok meter-agent` on node 1: node 1's energy, node 0 not metered."
    p0, p1 = two_nodes(['tests/dist_job.py', 'load'], ['--no-python', ENERGYTOK, 'meter-agent'], job_env(10.0), job_env(20.0))
    assert (p0.returncode, p1.returncode) == (0, 0), (p0.stderr[-2000:], p1.stderr[-2000:])
    r = result_of(p0)
    for w in (r['first'], r['second']):
        assert sorted(w['energy_by_domain_j']) == ['node1/cpu:0-package', 'node1/gpu:0']
        assert w['avg_power_w'] == pytest.approx(80.0, rel=0.03)
        assert any(f.startswith('not-metered:node0') for f in w['flags'])
    assert 'metered node1 (cpu:0-package, gpu:0) for 2 window(s)' in p1.stdout

def test_rank_that_vanishes_is_named():
    "Rank 1 dies inside a window without a word: rank 0 closes it after its time-out, incomplete, naming the rank and node."
    t0 = time.monotonic()
    p = torchrun(['--standalone', '--nproc-per-node', '2', 'tests/dist_job.py'],
                 job_env(10.0, TEST_FAIL_RANK=1, TEST_FAIL='exit', TEST_FAIL_AT='inside', TEST_TIMEOUT_S=3))
    assert p.returncode == 0, p.stderr[-3000:]
    r = result_of(p)
    first, second = r['first'], r['second']
    assert first['complete'] and not second['complete']
    assert second['lost_ranks'] == {'1': "did not reach the end of window 'second' within 3 s"}
    assert second['flags'][0] == 'incomplete: rank(s) 1 lost'
    assert "rank-lost:rank 1 on node0 (host" in second['flags'][1]
    assert second['energy_j'] is not None  # node0's sampler is rank 0, alive: its energy is known
    assert 3.0 <= r['second_s'] < 3.0 + 5.0  # rank 0 waited its time-out, not longer
    assert time.monotonic() - t0 < 60

def test_node_that_cannot_measure_makes_the_total_missing():
    "Node 1's CPU package refuses every read, then its only rank raises: no window sums node 0 alone as the job's energy."
    env1 = job_env(TEST_NODE_SENSORS='broken', TEST_FAIL_RANK=1, TEST_FAIL='raise', TEST_FAIL_AT='between', TEST_TIMEOUT_S=20)
    t0 = time.monotonic()
    p0, p1 = two_nodes(['tests/dist_job.py'], ['tests/dist_job.py'], job_env(10.0, TEST_TIMEOUT_S=20), env1)
    assert p1.returncode not in (0, None), p1.stderr[-2000:]  # node 1's rank raised
    r = result_of(p0, p1)
    first, second = r['first'], r['second']
    assert first['energy_j'] is None and first['missing_domains'] == ['node1/cpu:0-package']
    assert first['energy_by_node_j']['node0'] == pytest.approx(40.0 * first['duration_s'], rel=0.03)
    assert first['provenance']['node1/cpu:0-package'] == 'missing:rapl'
    assert any(f.startswith('energy-missing:node1/cpu:0-package') and 'permission denied' in f for f in first['flags'])
    assert second['energy_j'] is None and not second['complete']
    assert 'RuntimeError: rank failed on purpose' in second['lost_ranks']['1']  # it said why as it left
    assert second['flags'][0] == 'incomplete: rank(s) 1 lost; no energy from node1 (host ' + socket.gethostname() + ', rank 1)'
    assert r['second_s'] < 10  # told at once: rank 0 did not wait out its 20 s time-out
    assert time.monotonic() - t0 < 60


def test_bench_serve_over_two_nodes_meters_both(tmp_path):
    "bench-serve on rank 0 (node 0, which also serves) and `energytok meter-agent` on node 1: every level's record has both nodes."
    pytest.importorskip('httpx'); pytest.importorskip('starlette')
    from energytok.serve_client import ServerThread, fake_openai_app
    with ServerThread(fake_openai_app(output_tokens=6)) as srv:
        bench = ['--no-python', ENERGYTOK, 'bench-serve', '--url', srv.url, '--concurrency', '1,2', '--num-prompts', '8',
                 '--max-tokens', '6', '--repetitions', '1', '--warmup', '0', '--out', str(tmp_path), '--quiet']
        p0, p1 = two_nodes(bench, ['--no-python', ENERGYTOK, 'meter-agent'], job_env(10.0), job_env(20.0), timeout_s=120)
    assert (p0.returncode, p1.returncode) == (0, 0), (p0.stdout[-2000:], p0.stderr[-2000:], p1.stderr[-2000:])
    runs = load_runs(tmp_path)
    assert len(runs) == 2 and set(runs.concurrency) == {1, 2}
    for r in runs.itertuples():
        assert sorted(r.energy_by_node_j) == ['node0', 'node1'] and all(e > 0 for e in r.energy_by_node_j.values())
        assert r.n_nodes == 2 and r.j_per_token > 0
    assert 'metered node1' in p1.stdout
