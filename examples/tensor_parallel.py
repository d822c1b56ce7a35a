"""Meter a tensor-parallel job with energytok: an MLP split over the ranks (column- then row-parallel, one all-reduce
per step) run inside one distributed window.

    torchrun --standalone --nproc-per-node 2 examples/tensor_parallel.py
    torchrun --nnodes 2 --node-rank K --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id tp \\
             examples/tensor_parallel.py --backend nccl

The model's collectives use the process group's backend (gloo on CPUs, nccl on GPUs); the meter uses only the job's
c10d store. Each node's lowest local rank samples that node's sensors; rank 0 prints the window's result: energy per
node and device, the total (None if any node could not measure), the slowest node's duration and every flag."""
import argparse, json, os
import torch, torch.distributed as dist
from energytok.distributed import DistributedMeter

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--backend', default='gloo', choices=('gloo', 'nccl'), help="backend of the model's collectives")
    p.add_argument('--d-model', type=int, default=256, help='width of the MLP (its hidden layer is 4x wider)')
    p.add_argument('--batch', type=int, default=8, help='rows per step')
    p.add_argument('--steps', type=int, default=200, help='steps in the metered window')
    p.add_argument('--timeout-s', type=float, default=120.0, help='longest rank 0 waits at an edge for the other ranks, s')
    p.add_argument('--json', action='store_true', help="print the result's to_dict() as JSON")
    a = p.parse_args()
    dist.init_process_group(a.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if (4 * a.d_model) % world: p.error(f"--d-model: 4 x {a.d_model} must divide evenly over {world} ranks")
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if a.backend == 'nccl' else torch.device('cpu')
    if dev.type == 'cuda': torch.cuda.set_device(dev)
    g = torch.Generator().manual_seed(0)  # every rank draws the same full weights and keeps its shard
    w1 = (torch.randn(a.d_model, 4 * a.d_model, generator=g) / a.d_model ** 0.5).chunk(world, dim=1)[rank].to(dev)
    w2 = (torch.randn(4 * a.d_model, a.d_model, generator=g) / (4 * a.d_model) ** 0.5).chunk(world, dim=0)[rank].to(dev)
    x = torch.randn(a.batch, a.d_model, generator=g).to(dev)
    with DistributedMeter(sync=torch.cuda.synchronize if dev.type == 'cuda' else None, timeout_s=a.timeout_s) as dm:
        with dm.window('decode') as w, torch.inference_mode():
            for _ in range(a.steps):
                y = torch.relu(x @ w1) @ w2  # this rank's share of the output
                dist.all_reduce(y)  # the whole output, on every rank
                x = torch.tanh(y)
    if rank == 0:
        r = w.result
        print(json.dumps(r.to_dict(), default=str) if a.json else r)
        if r.energy_j is not None and not a.json:
            print(f"{r.energy_j / a.steps:.4g} J per step ({world} ranks on {len(r.nodes)} node(s), {r.provenance_label})")
    dist.destroy_process_group()

if __name__ == '__main__': main()
