"""Serving client overhead: the load generator's own CPU cost per request and the request rate it can drive, against a
local fake OpenAI-compatible server that answers at once, compared with the throughput of a real server.

The fake server (`energytok.serve_client.fake_openai_app`) runs in its own process, so the CPU time measured in this
process (`time.process_time`, all threads: the asyncio client, httpx, the meter's sampler) is the client's alone. The
same closed-loop level (`energytok.serving.run_level`, as `energytok bench-serve` sends it) is then sent to a real
server: `transformers serve` with a small local model (built here, nothing downloaded), or any server given with
--url. Prints the client's request rate divided by the server's (how many times the server's load the client could
drive) and the share of one CPU core the client needs at the server's rate. Everything from one run.
Usage: python benchmarks/serve_overhead.py [--requests N] [--concurrency C] [--max_tokens K] [--url URL] [--skip_server]
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path


def level(url, prompts, concurrency, max_tokens, meter):
    "One closed-loop level against `url`: (wall s, client CPU s, ok requests, output tokens)."
    from energytok.serve_client import Endpoint, resolve_model, run_async, count_tokens
    from energytok.serving import run_level, LoadLevel
    ep = resolve_model(Endpoint(url))
    run_async(run_level(ep, prompts[:2 * concurrency], LoadLevel(concurrency=concurrency), meter, name='warm', max_tokens=max_tokens))
    c0, w0 = time.process_time(), time.perf_counter()
    run = run_async(run_level(ep, prompts, LoadLevel(concurrency=concurrency), meter, name='timed', max_tokens=max_tokens))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    for r in run.results: count_tokens(r, prompts[r.index])
    bad = [r.error for r in run.failed]
    if bad: sys.exit(f'{len(bad)} requests failed against {url}; first: {bad[0]}')
    return wall, cpu, len(run.ok), sum(r.output_tokens for r in run.ok)


def fake_server(port, max_tokens):
    "The fake server in a subprocess, started and answering."
    import httpx
    code = ('import uvicorn; from energytok.serve_client import fake_openai_app; '
            f"uvicorn.run(fake_openai_app(output_tokens={max_tokens}), host='127.0.0.1', port={port}, log_level='critical')")
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f'http://127.0.0.1:{port}/v1/models', timeout=1, trust_env=False).status_code == 200: return proc
        except httpx.HTTPError: time.sleep(0.2)
    proc.kill(); sys.exit('the fake server did not start')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--requests', type=int, default=200, help='requests per level')
    ap.add_argument('--concurrency', type=int, default=16)
    ap.add_argument('--max_tokens', type=int, default=32)
    ap.add_argument('--url', default=None, help='a real server to compare with (default: transformers serve with a small local model)')
    ap.add_argument('--skip_server', action='store_true', help='measure the client only')
    a = ap.parse_args()

    from energytok.serve_client import load_prompts, sample_prompts, free_port, TransformersServer
    from energytok.meter import Meter
    prompts = sample_prompts(load_prompts(), a.requests, 0)
    with Meter() as meter:
        port = free_port()
        proc = fake_server(port, a.max_tokens)
        try: fw, fc, fn, ft = level(f'http://127.0.0.1:{port}/v1', prompts, a.concurrency, a.max_tokens, meter)
        finally: proc.terminate(); proc.wait(timeout=10)
        sensors = '+'.join(sorted({s.provenance for s in meter.sensors}))
        print(f'{a.requests} requests of {a.max_tokens} tokens, closed loop at concurrency {a.concurrency}; meter sensors: {sensors}')
        print(f"{'case':<22} {'wall_s':>8} {'requests/s':>11} {'tokens/s':>10} {'client_cpu_s':>13} {'cpu_ms/request':>15} {'cpu_us/token':>13}")
        print(f"{'fake server (client)':<22} {fw:>8.2f} {fn / fw:>11.1f} {ft / fw:>10.0f} {fc:>13.2f} {fc / fn * 1e3:>15.2f} {fc / ft * 1e6:>13.1f}")
        if a.skip_server: return
        if a.url: sw, sc, sn, st = level(a.url, prompts, a.concurrency, a.max_tokens, meter); name = a.url
        else:
            from energytok.harness import tiny_hf_model
            with tempfile.TemporaryDirectory() as d:
                with TransformersServer(tiny_hf_model(Path(d)/'tiny-llama')) as srv:
                    sw, sc, sn, st = level(srv.url, prompts, a.concurrency, a.max_tokens, meter)
            name = 'transformers serve, tiny Llama, CPU'
    print(f"{'server':<22} {sw:>8.2f} {sn / sw:>11.1f} {st / sw:>10.0f} {sc:>13.2f} {sc / sn * 1e3:>15.2f} {sc / max(st, 1) * 1e6:>13.1f}")
    print(f'server: {name}')
    print(f'client request rate / server request rate: {(fn / fw) / (sn / sw):.1f}x '
          f'(the load generator could drive that many times the load this server sustains)')
    print(f"client CPU at the server's rate: {fc / fn * (sn / sw) * 100:.1f}% of one core "
          f'({os.cpu_count()} cores here; the fake server ran in its own process, so this is the client alone)')


if __name__ == '__main__':
    main()
