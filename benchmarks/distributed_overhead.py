"""What a distributed window costs against a local one, measured within one torchrun job and printed as ratios.

Every rank opens and closes empty windows on a `DistributedMeter`; in each repetition rank 0 also opens and closes
one on an ordinary `Meter` of its own, before or after (shuffled). Both meters read the same kind of sensor (two
replayed constant-power traces), so the difference is what the edges through the job's store cost: every rank's
arrival, rank 0's answer, each node's report. Rank 0 prints the median open+close time of each kind, their ratio,
and the median lag of each node's edges behind rank 0's.

Usage: torchrun --standalone --nproc-per-node 2 benchmarks/distributed_overhead.py [--windows 200]
       (over two nodes: torchrun --nnodes 2 --node-rank K --master-addr HOST --master-port 29500 ... on each)
"""
import argparse, random, statistics, time
import numpy as np
from energytok.distributed import DistributedMeter, init_from_env
from energytok.meter import Meter
from energytok.sensors import ReplaySensor, Trace

def sensors():
    steady = lambda w, d: ReplaySensor(Trace.from_function(lambda t: w + 0 * t, 600.0, 0.01, source='constant'), domain=d)
    return [steady(50.0, 'cpu:0-package'), steady(200.0, 'gpu:0')]

def quartiles(xs) -> str:
    q = np.percentile(xs, [25, 50, 75])
    return f"median {q[1] * 1e3:.3f} ms (IQR {q[0] * 1e3:.3f}-{q[2] * 1e3:.3f})"

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--windows', type=int, default=200, help='windows of each kind')
    a = p.parse_args()
    if not init_from_env(): p.error('run it under torchrun (see the usage above)')
    import torch.distributed as dist
    dm = DistributedMeter(sensors, period_s=0.01)
    local = Meter(sensors(), period_s=0.01) if dm.rank == 0 else None
    rng, dist_s, local_s, lags = random.Random(0), [], [], {}
    with dm:
        if local: local.start()
        for i in range(a.windows):
            first = rng.random() < 0.5 if local else False
            for kind in (['local', 'dist'] if first else ['dist', 'local']):
                if kind == 'local' and local:
                    t0 = time.perf_counter(); local.begin_window('w'); local.end_window('w'); local_s.append(time.perf_counter() - t0)
                elif kind == 'dist':
                    t0 = time.perf_counter(); dm.begin_window('w'); r = dm.end_window('w'); dist_s.append(time.perf_counter() - t0)
                    if r is not None:
                        for n, lag in r.edge_lag_s.items(): lags.setdefault(n, []).extend(lag)
        if local: local.stop()
    if dm.rank == 0:
        print(f"{dm.world_size} ranks on {len(dm.nodes)} node(s), {a.windows} windows of each kind")
        print(f"  local Meter open+close:            {quartiles(local_s)}")
        print(f"  DistributedMeter open+close:       {quartiles(dist_s)}")
        print(f"  ratio distributed / local (median): {statistics.median(dist_s) / statistics.median(local_s):.1f}x")
        for n, xs in lags.items(): print(f"  edge lag of {n} behind rank 0's:    {quartiles(xs)}")
    dist.destroy_process_group()

if __name__ == '__main__': main()
