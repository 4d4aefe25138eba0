"""Streaming forward-model training against cache-then-train, on the same tokens, as JSON lines.

The subject is a randomly initialised model built from SmolLM2-135M's config (Llama, d=576, 30 blocks, GQA 9/3,
vocab 49152), fp32 on the CPU; forward models are the paper's 1% model (1 layer, 1 head of 64, MLP 2x). Random
token ids; the pair is (layers-2 -> layers-1). One JSON line (plus the machine's):

- ``stream_vs_cache``: one pair (layers-2 -> layers-1) trained for one epoch over ``--tokens`` tokens, streaming
  (:class:`~selfmodels.forward.stream.ActivationStream` + :func:`~selfmodels.forward.train.train_many`) against
  writing the fp16 activation cache of the same windows and training from it (cache write included). The stream
  runs the subject on a few more sequences than it trains on (the buffer it fills past the last batch:
  ``subject_sequences``), which only matters at this toy size.

K pairs from one pass against K passes: benchmarks/k_pairs.py.

    python benchmarks/stream_vs_cache.py [--layers 4] [--tokens 4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from selfmodels.forward.cache import CacheSpec, write_cache
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.forward.train import train_many
from selfmodels.forward.stream import ActivationStream
from selfmodels.forward.train import ForwardTrainConfig, train_forward
from selfmodels.runtime import set_threads
from selfmodels.subjects.hf import HFSubject


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def smollm2_config_subject(seed: int) -> HFSubject:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    return HFSubject(model, "smollm2-config")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4, help="depth used: the pair is (layers-2 -> layers-1)")
    p.add_argument("--tokens", type=int, default=4096, help="tokens each run trains on (one epoch)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--pass-sequences", type=int, default=16)
    p.add_argument("--buffer", type=int, default=16, help="shuffle buffer, sequences")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    set_threads(args.threads)
    if not 2 <= args.layers <= 30:
        raise SystemExit("need 2 <= --layers <= 30")
    began = time.perf_counter()
    subject = smollm2_config_subject(0)
    print(json.dumps({"bench": "machine", "cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                      "subject": subject.name, "params": subject.n_params, "layers_used": args.layers}), flush=True)
    depth = args.layers - 1
    windows = args.tokens // args.seq_len
    steps = windows // args.batch_size
    tokens = torch.randint(0, subject.vocab_size, (windows * args.seq_len + 1,), generator=torch.Generator().manual_seed(1))
    device = torch.device("cpu")
    fcfg = ForwardModelConfig(d_model=subject.d_model)
    tcfg = ForwardTrainConfig(steps=steps, batch_size=args.batch_size, log_every=10**9, checkpoint_every=10**9)

    def stream(indices):
        return ActivationStream(subject, tokens, indices, args.seq_len, args.batch_size, args.buffer, args.pass_sequences, seed=0)

    with torch.no_grad():  # warm-up: first calls allocate and pick kernels
        subject.residuals(stream([depth]).window_inputs(list(range(min(2, windows)))), [depth])

    # 1. one pair: streaming against cache-then-train
    source, target = depth - 1, depth
    s = stream([source, target])
    t0 = time.perf_counter()
    train_many({"pair": (ForwardModel(fcfg), source, target)}, s, tcfg, device, None, progress=False)
    stream_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        ids = s.window_inputs(list(range(windows)))  # (N, T): the same windows
        spec = CacheSpec("smollm2-config", "random", "random tokens", [str(source), str(target)], args.seq_len, subject.d_model, "float16")

        def collect(batch_ids):
            acts = subject.residuals(batch_ids, [source, target])
            return {str(k): v for k, v in acts.items()}

        t0 = time.perf_counter()
        cache = write_cache(Path(tmp) / "cache", spec, ids, collect, batch_size=args.pass_sequences, progress=False)
        write_s = time.perf_counter() - t0
        batches = cache.batches(str(source), str(target), args.batch_size, torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        train_forward(ForwardModel(fcfg), batches, tcfg, device, progress=False)
        train_s = time.perf_counter() - t0
        cache_bytes = sum(f.stat().st_size for f in Path(tmp, "cache").rglob("*.npy"))
    trained = steps * args.batch_size * args.seq_len
    print(json.dumps({
        "bench": "stream_vs_cache", "pair": [source, target], "tokens_trained": trained, "steps": steps,
        "stream_tokens_per_s": trained / stream_s, "stream_seconds": stream_s,
        "stream_subject_sequences": s.passes * args.pass_sequences, "cache_subject_sequences": windows,
        "cache_tokens_per_s": trained / (write_s + train_s), "cache_write_seconds": write_s, "cache_train_seconds": train_s,
        "cache_bytes": cache_bytes, "stream_speedup": (write_s + train_s) / stream_s,
        "benchmark_seconds": time.perf_counter() - began,
    }), flush=True)


if __name__ == "__main__":
    main()
