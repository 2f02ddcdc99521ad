"""Runs llama.cpp's server as a process: ``python -m slurm_llm.engines.llamacpp_server``.

xllamacpp's server lives exactly as long as its ``Server`` object, so this process holds it until
SIGTERM or SIGINT. Running it as its own process (not inside the launcher) keeps the launcher's
supervision uniform across engines: every engine is a child process that can crash and be
restarted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import xllamacpp


def build_params(args: argparse.Namespace) -> xllamacpp.CommonParams:
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx_size
    params.n_parallel = args.parallel
    params.cont_batching = True
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_gpu_layers = args.n_gpu_layers
    params.endpoint_metrics = True
    params.warmup = False
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--alias", required=True, help="served model name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ctx-size", type=int, default=4096, help="total KV size, split by slots")
    parser.add_argument("--parallel", type=int, default=4, help="slots (concurrent sequences)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = xllamacpp.Server(build_params(args))
    print(f"llama.cpp server for {args.alias} on {args.host}:{args.port}", flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
