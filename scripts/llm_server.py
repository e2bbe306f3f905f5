"""llama.cpp's OpenAI-compatible HTTP server (PyPI wheel xllamacpp), for the `openai` reply
backend's tests and bench: /health and /v1/chat/completions (streamed with "stream": true).

    .assets/venv-llm-server/bin/python scripts/llm_server.py --port 8080 \
        --model .assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2

Installed by scripts/setup.d/50-llm-server.sh. Runs until SIGTERM/SIGINT; prints
"listening on HOST:PORT" once the server accepts requests.
"""

import argparse
import signal
import sys
import threading

import xllamacpp as xlc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="GGUF file to serve")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for generation")
    ap.add_argument("--parallel", type=int, default=2, help="requests decoded at once (slots)")
    ap.add_argument("--ctx", type=int, default=4096, help="context tokens, shared by the slots")
    args = ap.parse_args()

    p = xlc.CommonParams()
    p.model.path = args.model
    p.hostnames = [args.host]
    p.port = args.port
    p.n_parallel = args.parallel
    p.n_ctx = args.ctx
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    server = xlc.Server(p)  # returns once the model is loaded and the port is bound

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"listening on {args.host}:{args.port}", flush=True)
    while not stop.wait(1.0):
        pass
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
