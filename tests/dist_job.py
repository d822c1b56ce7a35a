"""A job for tests/test_distributed.py: ranks meter two windows with a `DistributedMeter`, and one may fail on purpose.

Each simulated node's sensors come from `node_sensors` (ENERGYTOK_NODE_SENSORS=dist_job:node_sensors, this folder on
PYTHONPATH): constant replayed power of TEST_NODE_POWER_W on the CPU package and three times that on `gpu:0`, or, with
TEST_NODE_SENSORS=broken, a CPU package that refuses every read. TEST_FAIL_RANK fails in the way TEST_FAIL says
('exit': vanishes without a word; 'raise': an exception), at TEST_FAIL_AT ('between' the windows, or 'inside' the
second). With the argument `load`, rank 0 is a load generator that does not sample and the others are agents
(`energytok meter-agent`). Rank 0 prints one line: RESULT and a JSON object (the windows, and the job's devices).

`fake_gpu_node` (ENERGYTOK_NODE_SENSORS=dist_job:fake_gpu_node) is a node of four stand-in GPUs (FakeNVML; NVML's GPU i
draws (i + 1) x TEST_NODE_POWER_W) behind CUDA_VISIBLE_DEVICES=TEST_CUDA_VISIBLE, metered through the sensors layer
for the GPUs the node's ranks use; with TEST_FAKE_CUDA=1 each rank's torch says CUDA is available, so a rank that is
not told its GPUs uses cuda:LOCAL_RANK, as on a GPU node."""
import json, os, sys, time
from energytok.sensors import ReplaySensor, Trace, Sensor, SensorError

class RefusingRAPL(Sensor):
    "A CPU package whose every read fails, as RAPL does without permission."
    domain, kind, provenance, power_provenance, has_counter = 'cpu:0-package', 'rapl', 'rapl', 'rapl', True
    def read(self): raise SensorError('cpu:0-package: permission denied reading energy_uj')

def node_sensors() -> list:
    "This simulated node's sensors (see the module docstring)."
    if os.environ.get('TEST_NODE_SENSORS') == 'broken': return [RefusingRAPL()]
    p = float(os.environ['TEST_NODE_POWER_W'])
    steady = lambda w, d: ReplaySensor(Trace.from_function(lambda t: w + 0 * t, 600.0, 0.01, source='constant'), domain=d)
    return [steady(p, 'cpu:0-package'), steady(3 * p, 'gpu:0')]

def fake_gpu_node(gpus=None):
    "This simulated GPU node's sensors for the GPUs `gpus` (see the module docstring), and the GPUs it leaves out."
    from energytok.nvml_fake import FakeNVML
    from energytok.sensors import choose_sensors
    p = float(os.environ['TEST_NODE_POWER_W'])
    fake = FakeNVML([dict(name='NVIDIA H100 80GB HBM3', uuid=f'GPU-node-{i}', power_w=(i + 1) * p, counter_update_s=0) for i in range(4)])
    return choose_sensors(gpus, nvml=fake, env={'CUDA_VISIBLE_DEVICES': os.environ['TEST_CUDA_VISIBLE']},
                          rapl_root='/nonexistent/powercap', estimate=False)

def main(argv):
    import torch.distributed as dist
    from energytok.distributed import init_from_env, DistributedMeter
    init_from_env()
    if os.environ.get('TEST_FAKE_CUDA') == '1':
        import torch
        torch.cuda.is_available = lambda: True  # this process plays a rank on a GPU node (its GPU is the stand-in's)
    load = argv[1:] == ['load']
    rank = dist.get_rank()
    fail = rank == int(os.environ.get('TEST_FAIL_RANK', -1))
    how, at = os.environ.get('TEST_FAIL', 'exit'), os.environ.get('TEST_FAIL_AT', 'between')
    def maybe_fail():
        if how == 'exit': os._exit(0)  # no atexit, no word to rank 0; exit status 0 so torchrun does not stop the others
        raise RuntimeError('rank failed on purpose')
    dm = DistributedMeter(period_s=0.02, timeout_s=float(os.environ.get('TEST_TIMEOUT_S', '10')), sample=False if load and rank == 0 else None)
    if load and rank: return dm.serve_agent()
    with dm:
        with dm.window('first') as w1: time.sleep(0.3)
        if fail and at == 'between': maybe_fail()
        t0 = time.monotonic()
        with dm.window('second') as w2:
            if fail and at == 'inside': maybe_fail()
            time.sleep(0.3)
        second_s = time.monotonic() - t0
    if rank == 0:
        print('RESULT ' + json.dumps(dict(first=w1.result.to_dict(), second=w2.result.to_dict(), second_s=second_s, devices=dm.devices()),
                                     default=str), flush=True)
    dist.destroy_process_group()

if __name__ == '__main__': main(sys.argv)
