"""One-shot GPU check: what this checkout does on one CUDA GPU, in under five minutes, as one JSON file.

Run it through ``benchmarks/gpu_check.sh`` (sets ``PYTHONPATH=src``, ``HF_HUB_OFFLINE=1``, a hard ``timeout``
and prints the JSON at the end), or directly::

    PYTHONPATH=src python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--out FILE] [--budget S]
                                                  [--sections a,b,...]

Nothing is downloaded and nothing is installed: every model is randomly initialised and every input is random.
Each section runs in its own child process with a time box (checked between steps inside the child, and a
hard kill of the child a little after it), inside a total budget (``--budget``, 280 s by default). The JSON
file (``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``gpu_check.json``; ``--out`` overrides) is rewritten
before and after every section, so a run that is cut off still reports what it finished.

Sections (``section`` names in the JSON):

1. ``environment``: python, torch (+ CUDA, cuDNN), transformers and our other dependencies' versions, GPU name,
   CUDA capability, bf16 support, GPU memory, SM count, nvidia-smi's driver / power / clock, CPU model, RAM.
2. ``matmul_peak``: TFLOP/s of one n x n x n matmul (2 n^3 FLOPs; n = 8192 on CUDA) in fp32 (TF32 off), TF32
   and bf16, timed with CUDA events (best and median of several rounds). The bf16 best is "the peak" below.
3. ``llc``: our batched SGLD LLC estimator (``selfmodels.complexity.llc.estimate_llc``) against devinterp on the
   setup of ``benchmarks/llc_vs_devinterp.py`` (its MLP 784-256-10, batch 512, 4 chains x 200 draws, ε 1e-4,
   γ 100; random MNIST-shaped data), same device, same data order: seconds of each, speedup, both estimates.
   devinterp is skipped (with the reason) when it is not importable. Then ``lm_llc_chains``: the quick LM grid's LLC
   (benchmarks/lm_llc_batched.py) with its chains batched by vmap (fused and explicit attention) against one chain
   at a time, and the speed-up (issue 23 asks for 2x; the 2-core CPU cannot give it, docs/llc.md).
4. ``forward_train``: training throughput of the paper's ~26M forward model (d 2048, SwiGLU 4096, one block)
   on random activations (8 x 2048 tokens per step), fp32 against bf16 autocast: tokens/s, achieved TFLOP/s
   (training = 3 x ``ForwardModel.flops_per_token``), its share of the measured bf16 peak, peak memory.
   ``forward_compile``: the same bf16 step under ``torch.compile``: ``compile`` (seconds of the first step, or
   the error if compiling fails: then ``compiled`` is false), ``steady_state`` (as above), speedup over eager bf16.
5. ``subject_throughput``: randomly initialised SmolLM2-135M- and Llama-3.2-1B-shaped Llama models (transformers),
   bf16, wrapped as ``HFSubject``: tokens/s of ``residuals(ids, [7, 8])`` (early exit) and of a full forward,
   8 x 2048 random ids. ``estimate_100M_tokens_7_to_8``: an ESTIMATE of the paper's 100M-token 7 -> 8 run
   (Llama-3.2-1B, whose width 2048 is the forward model's) on this GPU = 100M / collection tokens/s + 100M /
   forward-model training tokens/s (best of eager / compiled bf16), i.e. collection and training in sequence.
   ``peers``: benchmarks/residuals_vs_peers.py and substitution_smollm2.py on this GPU, bf16, on random SmolLM2- and
   Llama-3.2-1B-shaped models (8 x 2048 random ids): residuals 7, 8 by ours, nnsight (trace, early stop),
   TransformerLens (``run_with_cache``, ``names_filter``, ``stop_at_layer``) and ``output_hidden_states``; substitution
   7 -> 8 by our shared prefix, nnsight's intervention (one trace, three invokes) and three naive passes, beside the
   FLOP bound: tokens/s, ``time_vs_ours``, peak memory (``max_memory_allocated`` beyond what was allocated before the
   call) and ``memory_vs_ours``, the largest differences from ours. A peer that is not installed is named unavailable.
   ``multi_gpu``: with 2+ GPUs visible, a random SmolLM2-shaped model split across them (accelerate ``dispatch_model``,
   the blocks in equal runs per GPU) against the same model whole on one GPU: digest, residuals, split and splice at
   the pair crossing the first cut and the pair after it (source residual on the second GPU, forward model on the
   first). With one GPU it is skipped, saying so; the CPU dry run splits between "cpu" and "cpu" (code path only).
6. ``training_loops``: a few CUDA steps of every training loop on tiny random data: a self-modeling classifier
   run (``run_one``), our GPT with a co-trained forward model (``train_lm``), a forward model on activations
   collected on the fly (``train_forward``), the closed-form ridge baseline (``RidgeMap``), a self-modeling
   language model with its measures and LLC (``lm_selfmodeling.run.run_one``): ok / seconds each.
7. ``gpt_toy``: the ``paper-toy`` preset (``--preset paper-toy``: our 4 x 256 GPT, its forward model co-trained on
   0 -> 1) through the forward pipeline on the offline corpus's text (``--corpus``, default
   ``benchmarks/data/offline_corpus.txt``, written by ``benchmarks/export_corpus.py`` and carried along: the GPU
   machine has none of our data packages), with only its steps (3000 GPT steps instead of 4,883; 200 for the
   baselines; the snapshots past the end dropped) and its analyses (no capacity sweep, no analyses) overridden,
   listed under ``overridden``: cosine beside the skip cosine, update R², KL substituted / skipped, recovery, both
   per-position MLPs, the snapshots' skip KL, beside the paper's values; skipped without the file.
8. ``pytest_smoke``: ``python -m pytest -q -x tests/subjects/test_contract.py`` with this Python (CPU, tiny
   models: a check of the installed torch / transformers against our subject interface), time-boxed.

Reading the JSON: ``sections`` is a list with one record per section, in order; each has ``section`` and
``seconds`` and its numbers, or ``skipped`` (why it did not run: not on CUDA, time box, not importable, ...),
or ``error`` (the exception, with ``traceback``). Parts inside a section follow the same rule. A record with
``timed_out: true`` was killed at its time box and holds what it had finished. ``finished`` at the top level
is true only when the run reached its end. ``--device cpu --quick`` is the dry run used by the tests: small
shapes, and the CUDA-only parts recorded as skipped; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _shapes import SUBJECTS  # benchmarks/ (this script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"

# (name, time box in seconds on a full run, time box in a quick run). A section gets the smaller of its box and
# what is left of the total budget after keeping a few seconds for each later section.
SECTIONS = [
    ("environment", 15, 8),
    ("matmul_peak", 20, 8),
    ("llc", 35, 14),
    ("forward_train", 25, 10),
    ("forward_compile", 50, 10),
    ("subject_throughput", 40, 14),
    ("peers", 45, 20),
    ("multi_gpu", 20, 12),
    ("training_loops", 30, 10),
    ("gpt_toy", 60, 12),
    ("pytest_smoke", 40, 12),
]
NAMES = [name for name, _, _ in SECTIONS]
KILL_GRACE_S = 5  # a child stops itself at its time box; past it by this much, the parent kills it
KEEP_PER_LATER_SECTION_S = 4
PAPER_TOKENS = 100_000_000
CORPUS_VARIABLE = "GPU_CHECK_CORPUS"  # the parent hands --corpus to the section processes through it
DEFAULT_CORPUS = HERE / "data" / "offline_corpus.txt"  # written by benchmarks/export_corpus.py (not in git)


# ============================================================================ the parent: runs sections, writes JSON
def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_check.json" if out else Path("gpu_check.json")


def _by_name(report: dict) -> dict[str, dict]:
    return {r["section"]: r for r in report["sections"]}


def _num(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def derive(report: dict) -> None:
    """Numbers that combine sections: share of the bf16 peak, compile speedup, the 100M-token estimate."""
    s = _by_name(report)
    bf16 = s.get("matmul_peak", {}).get("bf16")
    peak = _num(bf16.get("tflops_best")) if isinstance(bf16, dict) else None
    train = s.get("forward_train", {})
    for variant in ("fp32", "bf16_autocast"):
        part = train.get(variant)
        if isinstance(part, dict) and _num(part.get("achieved_tflops")) is not None:
            part["share_of_bf16_peak"] = part["achieved_tflops"] / peak if peak else None
            if not peak:
                part["share_of_bf16_peak_missing"] = "no bf16 matmul peak measured (section matmul_peak)"
    comp_record = s.get("forward_compile", {})
    comp = comp_record.get("steady_state") if isinstance(comp_record.get("steady_state"), dict) else {}
    eager_bf16 = train.get("bf16_autocast", {}) if isinstance(train.get("bf16_autocast"), dict) else {}
    if _num(comp.get("tokens_per_s")) is not None:
        if _num(eager_bf16.get("tokens_per_s")):
            comp_record["speedup_over_eager_bf16"] = comp["tokens_per_s"] / eager_bf16["tokens_per_s"]
        if peak and _num(comp.get("achieved_tflops")) is not None:
            comp["share_of_bf16_peak"] = comp["achieved_tflops"] / peak
    subj = s.get("subject_throughput")
    if subj is not None and "skipped" not in subj:
        llama = subj.get("llama_3_2_1b", {}) if isinstance(subj.get("llama_3_2_1b"), dict) else {}
        collect = _num(llama.get("residuals_7_8", {}).get("tokens_per_s")) if isinstance(llama.get("residuals_7_8"), dict) else None
        trains = {name: _num(rec.get("tokens_per_s")) for name, rec in
                  (("eager bf16", eager_bf16), ("compiled bf16", comp)) if isinstance(rec, dict)}
        trains = {k: v for k, v in trains.items() if v}
        estimate: dict = {"label": "ESTIMATE, not a measured run: 100M tokens / measured tokens/s of each stage, "
                                   "collection (Llama-3.2-1B-shaped subject, early exit after block 8) then training "
                                   "(the ~26M d=2048 forward model), one after the other; data loading and evaluation not counted",
                          "tokens": PAPER_TOKENS}
        if collect and trains:
            best = max(trains, key=trains.get)
            collect_s, train_s = PAPER_TOKENS / collect, PAPER_TOKENS / trains[best]
            estimate.update(collection_s=collect_s, training_s=train_s, training_from=best,
                            total_s=collect_s + train_s, total_hours=(collect_s + train_s) / 3600)
            if subj.get("scaled_down") or train.get("scaled_down"):
                estimate["label"] += "; THIS RUN USED SCALED-DOWN SHAPES, so the number means nothing"
        else:
            estimate["skipped"] = "needs the Llama-3.2-1B residuals_7_8 tokens/s and a bf16 forward-model tokens/s"
        subj["estimate_100M_tokens_7_to_8"] = estimate


class Parent:
    def __init__(self, args):
        self.args, self.out = args, Path(args.out) if args.out else _default_out()
        self.began = time.monotonic()
        self.child: subprocess.Popen | None = None
        self.report = {
            "check": "selfmodels gpu_check", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": args.device,
            "quick": args.quick, "budget_s": args.budget, "finished": False, "elapsed_s": 0.0,
            "sections": [{"section": n, "skipped": "not reached: the run ended (time limit or crash) before this section"}
                         for n in NAMES],
        }

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.began, 2)
        with contextlib.suppress(Exception):
            derive(self.report)
        _write_json(self.out, self.report)

    def put(self, record: dict) -> None:
        self.report["sections"][NAMES.index(record["section"])] = record
        self.save()

    def on_signal(self, signum, frame):  # `timeout` sends SIGTERM: stop the child, keep the report
        self.kill_child()
        self.report["cut_off"] = f"received signal {signum} after {time.monotonic() - self.began:.0f} s"
        self.save()
        sys.exit(128 + signum)

    def kill_child(self) -> None:
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child.pid, signal.SIGKILL)  # its own session: the child and whatever it started
            with contextlib.suppress(Exception):
                self.child.wait(timeout=5)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        wanted = set(self.args.sections.split(",")) if self.args.sections else set(NAMES)
        unknown = wanted - set(NAMES)
        if unknown:
            print(f"unknown section(s) {sorted(unknown)}; known: {NAMES}", file=sys.stderr)
            return 2
        self.save()
        for i, (name, full_box, quick_box) in enumerate(SECTIONS):
            if name not in wanted:
                self.put({"section": name, "skipped": "not selected (--sections)"})
                continue
            if name == "forward_compile" and self.args.quick and not self.args.device.startswith("cuda"):
                self.put({"section": name, "skipped": COMPILE_DRY_RUN})  # (no process started for nothing)
                continue
            later = sum(1 for n in NAMES[i + 1:] if n in wanted)
            left = self.args.budget - (time.monotonic() - self.began) - KEEP_PER_LATER_SECTION_S * later
            box = min(quick_box if self.args.quick else full_box, left - KILL_GRACE_S)
            if box < 3:
                self.put({"section": name, "skipped": f"total budget of {self.args.budget} s spent before this section"})
                continue
            self.put({"section": name, "skipped": f"cut off while running (time box {box:.0f} s)"})
            self.put(self.run_child(name, box))
            print(f"[gpu_check] {name}: {_summary(self.report['sections'][i])}", file=sys.stderr, flush=True)
        self.report["finished"] = True
        self.save()
        return 0

    def run_child(self, name: str, box: float) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.args.corpus:
            env[CORPUS_VARIABLE] = str(Path(self.args.corpus).resolve())
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            record_path, log_path = Path(tmp) / "record.json", Path(tmp) / "log.txt"
            began = time.monotonic()
            # CLOCK_MONOTONIC is one clock for every process of the machine: the child stops itself at this time.
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--record", str(record_path),
                   "--deadline", repr(began + box), "--device", self.args.device] + (["--quick"] if self.args.quick else [])
            timed_out = False
            with open(log_path, "wb") as log:
                self.child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    rc = self.child.wait(timeout=box + KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    timed_out, rc = True, None
                    self.kill_child()
                self.child = None
            record = None
            with contextlib.suppress(Exception):
                record = json.loads(record_path.read_text())
            log_tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        if not isinstance(record, dict):
            record = {"section": name}
        record["section"] = name
        record["wall_s"] = round(time.monotonic() - began, 2)
        if timed_out:
            record["timed_out"] = True
            record.setdefault("skipped", f"killed {KILL_GRACE_S} s after its time box of {box:.0f} s; "
                                         "the parts above are what it finished")
        elif rc != 0:
            record.setdefault("error", f"section process exited with status {rc}")
        if timed_out or rc != 0 or "error" in record:
            record["log_tail"] = log_tail
        if not any(k in record for k in ("skipped", "error", "seconds")):
            record["error"] = "section process ended without a result"
        return record


def _summary(record: dict) -> str:
    for key in ("error", "skipped"):
        if key in record:
            return f"{key}: {str(record[key])[:200]}"
    return f"ok in {record.get('seconds', '?')} s"


# ============================================================================ the child: one section
class TimeBox(Exception):
    pass


class Ctx:
    """What a section sees: the device, quick mode, its deadline, and its record (saved after every part)."""

    def __init__(self, name: str, device: str, quick: bool, deadline: float, record_path: Path, use_torch: bool = True):
        import threading

        self.name, self.quick, self.record_path = name, quick, record_path
        self.began, self.deadline = time.monotonic(), deadline
        self.record: dict = {"section": name}
        self.requested = device
        self.lock, self.current, self.done, self.procs = threading.RLock(), None, False, []
        self.watchdog = threading.Timer(max(0.0, deadline - self.began), self.expire)
        self.watchdog.daemon = True
        self.watchdog.start()
        self.torch, self.cuda, self.device = None, False, "cpu (torch not imported)"
        if not use_torch:  # (a section that only runs a command need not pay for importing torch)
            return
        try:
            import torch
        except ImportError:
            if name != "environment":  # which still reports everything else about the machine
                raise
            self.torch_error = traceback.format_exc(limit=1)
            return

        self.torch = torch
        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        self.device = torch.device(device if (self.cuda or not device.startswith("cuda")) else "cpu")
        if quick and not self.cuda:
            torch.set_num_threads(1)  # the dry run's tiny shapes: intra-op threads only stall on a busy small machine

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, need: float = 0.0) -> None:
        if self.left() < need:
            raise TimeBox(f"section time box reached ({self.left():.1f} s left, {need:.0f} s wanted)")

    def save(self) -> None:
        with self.lock:
            for attempt in range(3):
                try:
                    _write_json(self.record_path, self.record)
                    return
                except RuntimeError:  # the main thread changed the record while the watchdog wrote it
                    if attempt == 2:
                        raise

    def expire(self) -> None:
        """The watchdog, at the deadline: mark what was running as cut off, save, and end the process."""
        with self.lock:
            if self.done:
                return
            for proc in self.procs:  # commands this section started (they share its process group)
                with contextlib.suppress(Exception):
                    proc.kill()
            if self.current is not None:
                self.record[self.current] = {"skipped": f"time box reached while this part ran "
                                                        f"({time.monotonic() - self.part_began:.1f} s in)"}
            else:
                self.record.setdefault("skipped", "time box reached in the section's own steps")
            self.record["timed_out"] = True
            self.record["seconds"] = round(time.monotonic() - self.began, 2)
            with contextlib.suppress(Exception):
                self.save()
            os._exit(0)

    def finish(self) -> None:
        with self.lock:
            self.done = True
            self.watchdog.cancel()
            self.record["seconds"] = round(time.monotonic() - self.began, 2)
            self.save()

    def command(self, cmd: list[str], timeout: float) -> tuple[int | None, str]:
        """Run ``cmd`` in the repository root; (status, stdout + stderr), status None if it ran past ``timeout``."""
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return None, out or ""
        finally:
            self.procs.remove(proc)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def part(self, key: str, fn, need: float = 1.0, cuda_only: bool = False):
        """``record[key] = fn()``; or ``skipped`` (not CUDA, time box) or ``error``; saved either way."""
        began = self.part_began = time.monotonic()
        if cuda_only and not self.cuda:
            self.record[key] = {"skipped": self.no_cuda_reason()}
        elif self.left() < need:
            self.record[key] = {"skipped": f"section time box reached before this part ({self.left():.1f} s left)"}
        else:
            self.current = key
            try:
                value = fn()
                value = value if isinstance(value, dict) else {"value": value}
                value.setdefault("seconds", round(time.monotonic() - began, 3))
            except TimeBox as exc:
                value = {"skipped": str(exc)}
            except Exception as exc:  # noqa: BLE001 - a check reports every failure and goes on
                value = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-3000:]}
            with self.lock:
                self.record[key], self.current = value, None
        self.save()
        return self.record[key]

    def no_cuda_reason(self) -> str:
        torch = self.torch
        if not self.requested.startswith("cuda"):
            return f"CUDA only: this run uses --device {self.requested}"
        if torch is None:
            return "CUDA only: torch is not importable"
        return (f"CUDA only: --device {self.requested} but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")

    def timed(self, fn, reps: int, warmup: int = 1, need_each: float = 0.0) -> list[float]:
        """Seconds of each of ``reps`` calls of ``fn`` after ``warmup`` calls (CUDA events on CUDA); stops at the
        time box once at least one timed call is done."""
        torch = self.torch
        for _ in range(warmup):
            self.check(need_each)
            fn()
        self.sync()
        times = []
        for _ in range(reps):
            if times and self.left() < max(need_each, 2 * max(times)):
                break
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return times


def _version(dist: str):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- 1. environment
def sec_environment(ctx: Ctx) -> None:
    torch = ctx.torch

    def software():
        out = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform()}
        if torch is None:
            out["torch"] = f"not importable: {getattr(ctx, 'torch_error', '?').strip().splitlines()[-1]}"
        else:
            out.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                       cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                       cuda_available=torch.cuda.is_available())
        for dist in ("transformers", "numpy", "scipy", "safetensors", "tqdm", "tokenizers", "datasets", "accelerate",
                     "huggingface_hub", "matplotlib", "devinterp", "pytest", "triton"):
            out[dist] = _version(dist)
        try:
            import selfmodels

            out["selfmodels_from"] = str(Path(selfmodels.__file__).resolve().parent)
            out["selfmodels_is_this_checkout"] = Path(selfmodels.__file__).resolve().is_relative_to(SRC.resolve())
        except Exception as exc:  # noqa: BLE001
            out["selfmodels_from"] = f"not importable: {type(exc).__name__}: {exc}"
        return out

    def gpu():
        p = torch.cuda.get_device_properties(ctx.device)
        major, minor = torch.cuda.get_device_capability(ctx.device)
        free, total = torch.cuda.mem_get_info(ctx.device)
        return {"name": torch.cuda.get_device_name(ctx.device), "count": torch.cuda.device_count(),
                "capability": f"{major}.{minor}", "bf16_supported": torch.cuda.is_bf16_supported(),
                "memory_total_gib": round(total / 2**30, 2), "memory_free_gib": round(free / 2**30, 2),
                "multiprocessors": p.multi_processor_count}

    def nvidia_smi():
        fields = "name,driver_version,power.limit,clocks.max.sm,clocks.max.memory,memory.total,temperature.gpu,utilization.gpu"
        try:
            status, out = ctx.command(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                                      timeout=min(15, max(1, ctx.left() - 1)))
        except FileNotFoundError:
            return {"skipped": "nvidia-smi is not on PATH"}
        return {"query": fields, "output": out.strip(), "status": status}

    def cpu():
        model = platform.processor() or None
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        mem = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal"):
                    mem = round(int(line.split()[1]) / 2**20, 1)
        return {"model": model, "logical_cpus": os.cpu_count(), "memory_gib": mem,
                "torch_threads": torch.get_num_threads() if torch is not None else None}

    ctx.part("software", software)
    ctx.part("gpu", gpu, cuda_only=True)
    if ctx.requested.startswith("cuda"):  # also when torch cannot see the GPU: does the driver?
        ctx.part("nvidia_smi", nvidia_smi)
    else:
        ctx.record["nvidia_smi"] = {"skipped": ctx.no_cuda_reason()}
    ctx.part("cpu", cpu)


# ---------------------------------------------------------------------------- 2. matmul peak
def sec_matmul_peak(ctx: Ctx) -> None:
    torch = ctx.torch
    n = 8192 if ctx.cuda and not ctx.quick else (4096 if ctx.cuda else 256)
    per_round = 10 if ctx.cuda else 2
    ctx.record.update(n=n, flops_per_matmul=2 * n**3, timing="CUDA events" if ctx.cuda else "perf_counter",
                      scaled_down=not ctx.cuda)

    def measure(dtype, precision):
        torch.set_float32_matmul_precision(precision)  # "highest": no TF32; "high": TF32 for fp32 matmuls
        try:
            g = torch.Generator(device=ctx.device).manual_seed(0)
            a = torch.randn(n, n, device=ctx.device, generator=g).to(dtype)
            b = torch.randn(n, n, device=ctx.device, generator=g).to(dtype)

            def product():
                for _ in range(per_round):
                    a @ b

            times = ctx.timed(product, reps=5, warmup=1)
        finally:
            torch.set_float32_matmul_precision("highest")
        tflops = [2 * n**3 * per_round / t / 1e12 for t in times]
        return {"tflops_best": max(tflops), "tflops_median": statistics.median(tflops), "rounds": len(times),
                "matmuls_per_round": per_round}

    ctx.part("fp32", lambda: measure(torch.float32, "highest"), need=2)
    ctx.part("tf32", lambda: measure(torch.float32, "high"), need=2, cuda_only=True)
    ctx.part("bf16", lambda: measure(torch.bfloat16, "highest"), need=2)


# ---------------------------------------------------------------------------- 3. LLC
def sec_llc(ctx: Ctx) -> None:
    torch = ctx.torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import llc_vs_devinterp as lvd  # benchmarks/llc_vs_devinterp.py: its setup, model training and FLOP count
    from selfmodels.complexity.llc import LLCConfig, cross_entropy, estimate_llc
    from selfmodels.nets.classifiers import MLPClassifier

    draws = 20 if ctx.quick else lvd.DRAWS
    reps = 1 if ctx.quick else 2
    n_examples = 1536 if ctx.quick else 3600
    g = torch.Generator().manual_seed(0)  # random MNIST-shaped data, as llc_vs_devinterp's fallback
    data = TensorDataset(torch.randn(n_examples, 1, 28, 28, generator=g), torch.randint(0, 10, (n_examples,), generator=g))
    torch.manual_seed(0)
    model = MLPClassifier(784, lvd.HIDDEN, 10)
    ctx.record["setup"] = {"model": f"MLP 784-{lvd.HIDDEN}-10", "batch": lvd.BATCH, "chains": lvd.CHAINS, "draws": draws,
                           "epsilon": lvd.EPSILON, "gamma": lvd.GAMMA, "examples": n_examples, "data": "random",
                           "reps": reps, "scaled_down": ctx.quick}
    ctx.record["train_loss"] = lvd.train_briefly(model, data, epochs=1 if ctx.quick else 10)
    model = model.to(ctx.device)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(*(t[order].to(ctx.device) for t in data.tensors)), batch_size=lvd.BATCH,
                        shuffle=False, drop_last=True)
    nbeta = lvd.BATCH / math.log(lvd.BATCH)
    flops = lvd.step_flops([len(b[0]) for b in loader]) * draws / lvd.DRAWS  # its count is for DRAWS steps

    def config(d):
        return LLCConfig(epsilon=lvd.EPSILON, gamma=lvd.GAMMA, chains=lvd.CHAINS, draws=d, burn_in=0, seed=0)

    def ours():
        if not ctx.quick:
            estimate_llc(model, loader, cross_entropy, config(5), device=ctx.device, progress=False)  # warm-up
        results = []
        times = ctx.timed(lambda: results.append(estimate_llc(model, loader, cross_entropy, config(draws),
                                                              device=ctx.device, progress=False)), reps=reps, warmup=0)
        r = results[-1]
        return {"s": times, "median_s": statistics.median(times), "llc": r.mean, "llc_std": r.std,
                "path": r.diagnostics.get("path"), "chain_groups": r.diagnostics.get("chain_groups"),
                "flags": r.flags, "gflops": flops / statistics.median(times) / 1e9}

    def theirs():
        import warnings

        try:
            from devinterp.optim.sgld import SGLD
            from devinterp.slt.sampler import estimate_learning_coeff_with_summary
        except Exception as exc:  # noqa: BLE001 - not installed on this machine
            return {"skipped": f"devinterp not importable: {type(exc).__name__}: {exc}"}

        def evaluate(m, batch):
            x, y = batch
            return nn.functional.cross_entropy(m(x), y), {}

        def run(d):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return estimate_learning_coeff_with_summary(
                    model, loader, evaluate=evaluate, sampling_method=SGLD,
                    optimizer_kwargs=dict(lr=lvd.EPSILON, localization=lvd.GAMMA, nbeta=nbeta),
                    num_chains=lvd.CHAINS, num_draws=d, num_burnin_steps=0, seed=0, device=ctx.device, verbose=False)

        if not ctx.quick:  # (devinterp has seconds of fixed cost per call on a CPU)
            run(5)  # warm-up
        results = []
        times = ctx.timed(lambda: results.append(run(draws)), reps=reps, warmup=0)
        r = results[-1]
        return {"version": _version("devinterp"), "s": times, "median_s": statistics.median(times),
                "llc": float(r["llc/mean"]), "llc_std": float(r["llc/std"])}

    o = ctx.part("ours", ours, need=3)
    t = ctx.part("devinterp", theirs, need=3)
    if _num(o.get("median_s")) and _num(t.get("median_s")):
        ctx.record["speedup"] = t["median_s"] / o["median_s"]
        ctx.record["agree"] = abs(o["llc"] - t["llc"]) <= math.sqrt(o["llc_std"] ** 2 + t["llc_std"] ** 2)
    ctx.part("lm_llc_chains", lambda: _lm_llc_chains(ctx), need=4)


def _lm_llc_chains(ctx: Ctx) -> dict:
    """The quick LM grid's LLC (benchmarks/lm_llc_batched.py's setup) with its chains batched by vmap (fused and
    explicit attention) against one chain at a time, on this device: issue 23 asks for 2x, which the 2-core CPU
    cannot give (docs/llc.md); a GPU may. Same seeds and noise: the traces' largest relative difference is recorded."""
    torch = ctx.torch
    import dataclasses
    import warnings

    import lm_llc_batched as bench  # benchmarks/lm_llc_batched.py: its windows
    from selfmodels.complexity.lm_llc import lm_llc
    from selfmodels.lm_selfmodeling.presets import quick_run
    from selfmodels.nets.gpt import GPT

    warnings.filterwarnings("ignore", message=".*batching rule.*")
    run = quick_run()
    gpt_cfg = dataclasses.replace(run.gpt, vocab_size=run.corpus.vocab_size, block_size=run.seq_len)
    llc = dataclasses.replace(run.llc, draws=20 if ctx.quick else run.llc.draws)
    torch.manual_seed(0)
    gpt = GPT(gpt_cfg).to(ctx.device)
    windows = bench.synthetic_windows(run.llc_windows, run.seq_len + 1, gpt_cfg.vocab_size, seed=0).to(ctx.device)
    out, traces = {"chains": llc.chains, "draws": llc.draws, "windows": run.llc_windows}, {}
    for name, (batched, explicit) in bench.VARIANTS.items():
        ctx.check(2)
        result = lm_llc(gpt, windows, dataclasses.replace(llc, batched=batched), device=ctx.device, explicit_attention=explicit)
        out[name] = {"seconds": result.diagnostics["seconds"], "path": result.diagnostics["path"]}
        traces[name] = result.loss_traces.double().cpu()
    first = next(iter(traces.values()))
    for name, trace in traces.items():
        out[name]["max_rel_trace_diff_vs_old"] = float(((trace - first).abs() / first.abs()).max())
    fastest_batched = min(out[n]["seconds"] for n in ("old", "new"))
    out["speedup_over_sequential"] = min(out[n]["seconds"] for n in ("sequential_fused", "sequential_explicit")) / fastest_batched
    return out


# ---------------------------------------------------------------------------- 4. forward-model training
def _forward_shape(ctx: Ctx) -> dict:
    if ctx.cuda:  # the paper's ~26M model, 8 x 2048 tokens per step (also with --quick: fewer steps only)
        return dict(d_model=2048, swiglu_hidden=4096, batch=8, seq=2048, steps=5 if ctx.quick else 20)
    return dict(d_model=128, swiglu_hidden=256, batch=2, seq=64, steps=2)


def _forward_step(ctx: Ctx, compiled: bool, autocast_dtype, shape: dict):
    """A ``train_forward`` step (AdamW, MSE in fp32, clip 1.0) with optional bf16 autocast and torch.compile."""
    torch = ctx.torch
    import torch.nn.functional as F

    from selfmodels.forward.model import ForwardModel, ForwardModelConfig
    from selfmodels.optim import make_adamw

    torch.manual_seed(0)
    model = ForwardModel(ForwardModelConfig(d_model=shape["d_model"], mlp="swiglu", swiglu_hidden=shape["swiglu_hidden"])).to(ctx.device)
    opt = make_adamw(model.parameters(), 1e-4, 0.01)
    x = torch.randn(shape["batch"], shape["seq"], shape["d_model"], device=ctx.device)  # (B, T, d)
    y = x + 0.1 * torch.randn_like(x)
    fn = torch.compile(model) if compiled else model
    losses = []

    def step():
        ctx_manager = (torch.autocast(device_type=ctx.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                       else contextlib.nullcontext())
        with ctx_manager:
            out = fn(x)
        loss = F.mse_loss(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach())

    return model, step, losses


def _throughput(ctx: Ctx, model, step, losses, shape: dict, warmup: int) -> dict:
    torch = ctx.torch
    tokens = shape["batch"] * shape["seq"]
    flops_step = 3 * model.flops_per_token(shape["seq"]) * tokens
    for _ in range(warmup):
        ctx.check(1)
        step()
    ctx.sync()
    began = time.perf_counter()
    if ctx.cuda:  # one pair of events around all the steps: no synchronisation between steps, as in training
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    done = 0
    while done < shape["steps"]:
        step()
        done += 1
        if ctx.left() < 3 * (time.perf_counter() - began) / done + 1:  # stop early, well before the time box
            break
    if ctx.cuda:
        end.record()
        end.synchronize()
        total = start.elapsed_time(end) / 1000
    else:
        total = time.perf_counter() - began
    out = {"tokens_per_s": tokens * done / total, "step_s_mean": total / done, "steps_timed": done,
           "achieved_tflops": flops_step * done / total / 1e12, "flops_per_step": flops_step, "tokens_per_step": tokens,
           "final_loss": float(losses[-1]), "loss_finite": bool(torch.isfinite(losses[-1]).item())}
    if ctx.cuda:
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 3)
    return out


def sec_forward_train(ctx: Ctx) -> None:
    torch = ctx.torch
    shape = _forward_shape(ctx)
    torch.set_float32_matmul_precision("highest")
    ctx.record.update(shape=shape, scaled_down=not ctx.cuda, fp32_matmul="TF32 off",
                      params=None)

    def variant(dtype):
        if ctx.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(ctx.device)
        model, step, losses = _forward_step(ctx, False, dtype, shape)
        ctx.record["params"] = model.num_params()
        return _throughput(ctx, model, step, losses, shape, warmup=3 if ctx.cuda else 1)

    ctx.part("fp32", lambda: variant(None), need=3)
    ctx.part("bf16_autocast", lambda: variant(torch.bfloat16), need=3)
    if _num(ctx.record["fp32"].get("tokens_per_s")) and _num(ctx.record["bf16_autocast"].get("tokens_per_s")):
        ctx.record["bf16_speedup"] = ctx.record["bf16_autocast"]["tokens_per_s"] / ctx.record["fp32"]["tokens_per_s"]


COMPILE_DRY_RUN = ("quick CPU dry run: torch.compile's C++ build takes minutes on a small CPU; "
                   "run without --quick to try it")


def sec_forward_compile(ctx: Ctx) -> None:
    torch = ctx.torch
    if ctx.quick and not ctx.cuda:
        ctx.record["skipped"] = COMPILE_DRY_RUN
        return
    shape = _forward_shape(ctx)
    ctx.record.update(shape=shape, scaled_down=not ctx.cuda, autocast="bf16", mode="default")
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    model, step, losses = _forward_step(ctx, True, torch.bfloat16, shape)

    def first_step():  # compiles the forward and the backward
        began = time.monotonic()
        step()
        ctx.sync()
        return {"compile_s": time.monotonic() - began, "loss_finite": bool(torch.isfinite(losses[-1]).item())}

    compiled = ctx.part("compile", first_step, need=5)
    ctx.record["compiled"] = "compile_s" in compiled
    if "error" in compiled:
        compiled["error"] = "torch.compile failed: " + compiled["error"]
    if ctx.record["compiled"]:
        ctx.part("steady_state", lambda: _throughput(ctx, model, step, losses, shape, warmup=2), need=3)
    else:
        ctx.record["steady_state"] = {"skipped": "the compiled step did not run (see compile)"}


# ---------------------------------------------------------------------------- 5. subject throughput
def sec_subject_throughput(ctx: Ctx) -> None:
    torch = ctx.torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from selfmodels.subjects.hf import HFSubject

    batch, seq = (8, 2048) if ctx.cuda else (2, 32)
    dtype = torch.bfloat16
    ctx.record.update(batch=batch, seq_len=seq, dtype="bf16", scaled_down=not ctx.cuda, layers=[7, 8],
                      transformers=_version("transformers"))

    def one(name: str, shape: dict):
        if not ctx.cuda:  # the dry run: same code, a tiny model of the same kind
            shape = dict(shape, hidden_size=64, intermediate_size=128, num_hidden_layers=9, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512)
        config = LlamaConfig(**shape, max_position_embeddings=max(seq, 2048))
        if ctx.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(ctx.device)
        began = time.monotonic()
        with torch.device(ctx.device):
            try:
                model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
            except (TypeError, ValueError, ImportError):
                model = AutoModelForCausalLM.from_config(config)
        model = model.to(dtype).eval().requires_grad_(False)
        out = {"build_s": time.monotonic() - began, "params": sum(p.numel() for p in model.parameters()),
               "attn_implementation": getattr(model.config, "_attn_implementation", None)}
        subject = HFSubject(model, name)
        ids = torch.randint(0, config.vocab_size, (batch, seq), device=ctx.device, generator=torch.Generator(device=ctx.device).manual_seed(0))
        tokens = ids.numel()
        with torch.inference_mode():
            acts = subject.residuals(ids, [7, 8])
            out["residual_shape"], out["residual_dtype"] = list(acts[8].shape), str(acts[8].dtype)
            del acts
            ctx.check(2)
            t = ctx.timed(lambda: subject.residuals(ids, [7, 8]), reps=5, warmup=0)
            out["residuals_7_8"] = {"tokens_per_s": tokens * len(t) / sum(t), "s_median": statistics.median(t), "reps": len(t)}
            ctx.record[name] = out
            ctx.save()
            ctx.check(2)
            t = ctx.timed(lambda: model(input_ids=ids, use_cache=False), reps=5, warmup=1)
            out["full_forward"] = {"tokens_per_s": tokens * len(t) / sum(t), "s_median": statistics.median(t), "reps": len(t),
                                   "note": "all blocks and the LM head (full-vocabulary logits)"}
        out["early_exit_speedup"] = out["residuals_7_8"]["tokens_per_s"] and (
            out["residuals_7_8"]["tokens_per_s"] / out["full_forward"]["tokens_per_s"])
        if ctx.cuda:
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 3)
        return out  # the model goes with this frame

    for name, shape in SUBJECTS.items():
        ctx.part(name, lambda n=name, s=shape: one(n, s), need=5)


# ---------------------------------------------------------------------------- 5b. peers, side by side
def _random_llama(ctx: Ctx, shape: dict, dtype, config_dir: Path | None = None):
    """A randomly initialised Llama-shaped causal LM on the section's device (a tiny one of the same kind in the CPU
    dry run); with ``config_dir``, its config is also saved there (TransformerLens reads it)."""
    torch = ctx.torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if not ctx.cuda:
        shape = dict(shape, hidden_size=64, intermediate_size=128, num_hidden_layers=10, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=512)
    config = LlamaConfig(**{"max_position_embeddings": 4096, **shape}, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = AutoModelForCausalLM.from_config(config)
    if config_dir is not None:  # TransformerLens takes a path with "llama" in it for a model name: keep it out
        config.save_pretrained(config_dir)
    return model.to(dtype).eval().requires_grad_(False)


def _word_tokenizer(vocab: int):
    """A word-level tokenizer of ``vocab`` tokens: nnsight's LanguageModel wants one; the ids go in as tensors."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="t0", pad_token="t0")


def _cuda_peak_growth(ctx: Ctx, fn) -> float | None:
    """MiB allocated at the call's peak beyond what was allocated before it (CUDA's allocator counts every tensor)."""
    torch = ctx.torch
    if not ctx.cuda:
        return None
    torch.cuda.synchronize(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    out = fn()
    torch.cuda.synchronize(ctx.device)
    del out
    return (torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20


def sec_peers(ctx: Ctx) -> None:
    """benchmarks/residuals_vs_peers.py and substitution_smollm2.py on this device: ours against nnsight,
    TransformerLens and output_hidden_states (residuals 7, 8), and against nnsight's intervention and three naive
    passes (substitution 7 -> 8), on randomly initialised SmolLM2- and Llama-3.2-1B-shaped models, same ids and dtype:
    tokens/s, peak memory (CUDA's allocator: the call's peak beyond what was allocated before it), largest differences."""
    torch = ctx.torch
    import residuals_vs_peers as peers
    import substitution_smollm2 as substitution
    from selfmodels.forward.evaluate import as_predictor
    from selfmodels.forward.model import ForwardModel, ForwardModelConfig
    from selfmodels.subjects.hf import HFSubject

    batch, seq = (8, 2048) if ctx.cuda else (2, 32)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    reps = 5 if ctx.cuda else 1
    ctx.record.update(batch=batch, seq_len=seq, dtype=str(dtype).removeprefix("torch."), scaled_down=not ctx.cuda,
                      indices=[peers.SOURCE, peers.TARGET], nnsight=_version("nnsight"),
                      transformer_lens=_version("transformer-lens"),
                      peak_memory="CUDA only" if not ctx.cuda else "max_memory_allocated - memory_allocated before the call")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_peers_"))

    def ids_for(model):
        vocab = model.config.vocab_size
        return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(ctx.device)

    def residuals(name: str, shape: dict) -> dict:
        config_dir = Path(tempfile.mkdtemp(prefix="config_", dir=tmp))  # (a path without "llama" in it: see _random_llama)
        model = _random_llama(ctx, shape, dtype, config_dir)
        subject, ids = HFSubject(model, name), ids_for(model)
        methods, unavailable = peers.make_methods(subject, config_dir, ids, tokenizer=_word_tokenizer(model.config.vocab_size))
        out = {"params": subject.n_params, **{m: {"unavailable": why} for m, why in unavailable.items()}}
        with torch.inference_mode():
            reference = methods["selfmodels"]()
            for method, fn in methods.items():
                ctx.check(2)
                got = fn()
                diff = max(float((got[k].float() - reference[k].float()).abs().max()) for k in reference)
                scale = max(float(reference[k].float().abs().max()) for k in reference)
                del got
                t = ctx.timed(fn, reps=reps, warmup=1)
                out[method] = {"tokens_per_s": ids.numel() * len(t) / sum(t), "s_median": statistics.median(t), "reps": len(t),
                               "max_abs_diff_vs_ours": diff, "max_abs_diff_relative": diff / scale,
                               "peak_growth_mib": _cuda_peak_growth(ctx, fn)}
                ctx.save()
        ours = out["selfmodels"]
        for method in methods:
            out[method]["time_vs_ours"] = ours["tokens_per_s"] / out[method]["tokens_per_s"]
            if ours["peak_growth_mib"]:
                out[method]["memory_vs_ours"] = out[method]["peak_growth_mib"] / ours["peak_growth_mib"]
        return out

    def substitute() -> dict:
        model = _random_llama(ctx, SUBJECTS["smollm2_135m"], dtype)
        subject, ids = HFSubject(model, "smollm2_135m"), ids_for(model)
        torch.manual_seed(0)  # the quick preset's forward model shape (1 head of 64, SwiGLU 1536), fp32 master weights
        forward_model = ForwardModel(ForwardModelConfig(d_model=subject.d_model, n_head=1, d_head=64 if ctx.cuda else 16,
                                                        mlp="swiglu", swiglu_hidden=4 * subject.d_model)).to(ctx.device).eval()
        variants, missing = substitution.make_variants(subject, ids, as_predictor(forward_model),
                                                       _word_tokenizer(model.config.vocab_size))
        out = {**{v: {"unavailable": why} for v, why in missing.items()}}
        with torch.inference_mode():
            reference = variants["shared"]()
            for name, fn in variants.items():
                ctx.check(2)
                got = fn()
                diff = max(float((a - b).abs().max()) for a, b in zip(reference, got))
                del got
                t = ctx.timed(fn, reps=reps, warmup=1)
                out[name] = {"s_median": statistics.median(t), "reps": len(t), "max_abs_logit_diff_vs_shared": diff,
                             "peak_growth_mib": _cuda_peak_growth(ctx, fn)}
                ctx.save()
        b = sum(p.numel() for p in subject.blocks[0].parameters())
        h, f, n, s, t = model.get_output_embeddings().weight.numel(), forward_model.num_params(), subject.n_layers, 7, 8
        out["flop_bound"] = 3 * (n * b + h) / ((s + 1) * b + ((n - s - 1) * b + h) + ((n - t - 1) * b + f + h) + ((n - t - 1) * b + h))
        for name in set(variants) - {"shared"}:
            out[f"{name}_over_shared"] = out[name]["s_median"] / out["shared"]["s_median"]
        return out

    ctx.part("residuals_smollm2_135m", lambda: residuals("smollm2_135m", SUBJECTS["smollm2_135m"]), need=4)
    if ctx.quick and not ctx.cuda:  # the dry run: the same code as above, on a tiny model again; time goes to the rest
        ctx.record["residuals_llama_3_2_1b"] = {"skipped": "quick CPU dry run: the same code as residuals_smollm2_135m"}
    else:
        ctx.part("residuals_llama_3_2_1b", lambda: residuals("llama_3_2_1b", peers.LLAMA_3_2_1B), need=6)
    ctx.part("substitution_smollm2_135m_7_to_8", substitute, need=4)


# ---------------------------------------------------------------------------- 5c. a model split across GPUs
def sec_multi_gpu(ctx: Ctx) -> None:
    """A subject whose blocks lie on two or more GPUs (accelerate's ``dispatch_model`` with a ``device_map``: the first
    half of the blocks on the first GPU, and so on): residuals, split, splice and digest against the same model whole
    on one GPU, at the pair that crosses the first cut and the pair just after it (whose source residual lies on the
    second GPU while the forward model stays on the first). With one GPU visible it is skipped, saying so; the CPU dry
    run splits the model between "cpu" and "cpu" (the code path only: no device is crossed)."""
    torch = ctx.torch
    import copy

    from accelerate import dispatch_model

    import selfmodels
    from selfmodels.forward.evaluate import as_predictor
    from selfmodels.forward.model import ForwardModel, ForwardModelConfig

    count = torch.cuda.device_count() if ctx.cuda else 0
    ctx.record["gpus_visible"] = count
    if ctx.cuda and count < 2:
        ctx.record["skipped"] = (f"{count} GPU visible (torch.cuda.device_count() = {count}): a device_map split needs 2 or "
                                 "more, so this check has nothing to split; CPU and disk offload layouts are tested by the "
                                 "suite (tests/subjects/test_open_model.py)")
        return
    devices = [f"cuda:{i}" for i in range(count)] if ctx.cuda else ["cpu", "cpu"]
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    whole = _random_llama(ctx, SUBJECTS["smollm2_135m"], dtype)
    L = whole.config.num_hidden_layers
    layout = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0], "lm_head": devices[0],
              **{f"model.layers.{k}": devices[k * len(devices) // L] for k in range(L)}, "model.norm": devices[-1]}
    split_model = dispatch_model(copy.deepcopy(whole), device_map=layout)
    cut = next(k for k in range(L) if layout[f"model.layers.{k}"] != devices[0]) if ctx.cuda else L // 2
    ctx.record.update(devices=devices, dry_run=not ctx.cuda, blocks=L, first_block_off_the_first_device=cut,
                      layout={d: [k for k in range(L) if layout[f"model.layers.{k}"] == d] for d in dict.fromkeys(devices)})
    tokenizer = _word_tokenizer(whole.config.vocab_size)
    one, many = selfmodels.open_subject(whole, tokenizer), selfmodels.open_subject(split_model, tokenizer)
    ids = torch.randint(0, whole.config.vocab_size, (2, 256 if ctx.cuda else 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    forward_model = ForwardModel(ForwardModelConfig(d_model=one.d_model, n_head=1, d_head=16, mlp="swiglu",
                                                    swiglu_hidden=2 * one.d_model)).to(devices[0]).eval()
    predictor = as_predictor(forward_model)

    def diff(a, b) -> float:
        return float((a.float().cpu() - b.float().cpu()).abs().max())

    def pair(source: int, target: int) -> dict:
        with torch.inference_mode():
            a, b = one.residuals(ids, [source, target]), many.residuals(ids, [source, target])
            split_one, split_many = one.split(source, target), many.split(source, target)
            logits_one = split_one.suffix(split_one.middle(split_one.prefix(ids)))
            logits_many = split_many.suffix(split_many.middle(split_many.prefix(ids)))
            out = {"source_device": str(b[source].device), "target_device": str(b[target].device),
                   "residuals_max_abs_diff": max(diff(a[k], b[k]) for k in a), "split_logits_max_abs_diff": diff(logits_one, logits_many)}
            with one.splice(predictor, source, target):
                spliced_one = whole(input_ids=ids.to(devices[0]), use_cache=False).logits
            with many.splice(predictor, source, target):
                spliced_many = split_model(input_ids=ids.to(devices[0]), use_cache=False).logits
            out["splice_logits_max_abs_diff"] = diff(spliced_one, spliced_many)
        return out

    ctx.part("digest", lambda: {"equal": one.describe()["weights_sha256"] == many.describe()["weights_sha256"]}, need=2)
    ctx.part(f"pair_{cut - 1}_{cut}", lambda: pair(cut - 1, cut), need=2)
    ctx.part(f"pair_{cut}_{cut + 1}", lambda: pair(cut, cut + 1), need=2)


# ---------------------------------------------------------------------------- 6. training loops
def sec_training_loops(ctx: Ctx) -> None:
    torch = ctx.torch
    from torch.utils.data import TensorDataset

    from selfmodels.data.classification import ClassificationData
    from selfmodels.forward.model import ForwardModel, ForwardModelConfig
    from selfmodels.forward.ridge import RidgeMap
    from selfmodels.forward.train import train_many
    from selfmodels.forward.stream import ActivationStream
    from selfmodels.forward.train import ForwardTrainConfig
    from selfmodels.nets.gpt import GPT, GPTConfig
    from selfmodels.selfmodeling.runs import resolve_run, run_one
    from selfmodels.subjects.gpt import GPTSubject
    from selfmodels.subjects.lm_training import CoTrain, LMTrainConfig, train_lm

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_loops_"))
    ctx.record["device"] = str(ctx.device)
    gpt_cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, d_model=64)
    tokens = torch.randint(0, 256, (40_000,), generator=torch.Generator().manual_seed(0))

    def on_device(module) -> bool:
        return all(p.device.type == ctx.device.type for p in module.parameters())

    def selfmodeling():
        g = torch.Generator().manual_seed(0)

        def part(n):
            y = torch.arange(n) % 10
            x = 0.5 * torch.randn(n, 1, 28, 28, generator=g)
            x.view(n, -1)[torch.arange(n), y] += 1.0
            return TensorDataset(x, y)

        n = 256 if ctx.quick else 1024
        data = ClassificationData("mnist", "random (gpu_check)", part(n), part(128), part(128), 10, (1, 28, 28), None,
                                  {"sizes": {"train": n, "val": 128, "test": 128}})
        config = resolve_run("mnist", hidden=64, method="self-model", strength=1.0, seed=0, epochs=1 if ctx.quick else 3,
                             batch_size=64)
        record = run_one(config, data, tmp / "selfmodeling", device=ctx.device, progress=False)
        ok = record is not None and 0 <= record["test_accuracy"] <= 1 and math.isfinite(record["train_ce"])
        return {"ok": bool(ok), "test_accuracy": record["test_accuracy"], "train_ce": record["train_ce"],
                "train_aux": record["train_aux"], "epochs": record["epochs"]}

    def gpt():
        torch.manual_seed(0)
        model = GPT(gpt_cfg)
        fwd = ForwardModel(ForwardModelConfig(d_model=64, d_head=32))
        r = train_lm(model, tokens[:36_000], tokens[36_000:], LMTrainConfig(steps=10, batch_size=8, eval_every=10, eval_batches=1),
                     tmp / "gpt", ctx.device, seed=0, cotrain=CoTrain(fwd, 0, 1), progress=False)
        ok = math.isfinite(r["val_loss"]) and on_device(model) and on_device(fwd) and (tmp / "gpt" / "forward.safetensors").is_file()
        return {"ok": bool(ok), **r}

    def forward_on_the_fly():
        torch.manual_seed(0)
        subject = GPTSubject(GPT(gpt_cfg).to(ctx.device).eval().requires_grad_(False))
        autocast = torch.bfloat16 if ctx.device.type == "cuda" else None
        stream = ActivationStream(subject, tokens, [0, 1], 64, 8, 32, 8, 0, autocast=autocast)
        model = ForwardModel(ForwardModelConfig(d_model=64, d_head=32))
        r = train_many({"fwd": (model, 0, 1)}, stream, ForwardTrainConfig(steps=10, batch_size=8), ctx.device, None,
                       progress=False)["fwd"]
        r["train_s"] = r.pop("seconds")
        ok = math.isfinite(r["final_mse"]) and on_device(model)
        # the ridge baseline, fitted on the same kind of batches, on the same device
        ridge = RidgeMap(64).to(ctx.device)
        for _ in range(8):
            acts = next(stream)
            ridge.accumulate(acts[0], acts[1])
        ridge.fit()
        acts = next(stream)
        source, target = acts[0], acts[1]
        ridge_mse = float(((ridge(source) - target.float()) ** 2).mean())
        skip_mse = float(((source.float() - target.float()) ** 2).mean())
        return {"ok": bool(ok and math.isfinite(ridge_mse)), **r, "ridge_mse": ridge_mse, "skip_mse": skip_mse,
                "ridge_device": str(ridge.weight.device)}

    def lm_selfmodeling():
        from selfmodels.complexity.llc import LLCConfig
        from selfmodels.lm_selfmodeling.observer import ObserverConfig
        from selfmodels.lm_selfmodeling.run import LMRunConfig, ObjectiveConfig, run_one as run_lm
        from selfmodels.subjects.registry import CorpusConfig

        text = tmp / "lm_corpus.txt"  # a small generated text: the section needs no data package
        text.write_text("\n\n".join(f"The quick brown fox ({i}) jumped over the lazy dog; the dog slept [{i % 7}]."
                                      for i in range(4000)))
        cfg = LMRunConfig(seq_len=32, gpt=GPTConfig(n_layer=2, n_head=2, d_model=32),
                          lm=LMTrainConfig(steps=10, batch_size=8, lr=1e-3, eval_every=10, eval_batches=1),
                          corpus=CorpusConfig(corpus=str(text), vocab_size=300),
                          objective=ObjectiveConfig(method="self-model", strength=1.0, site="head-input"),
                          observer=ObserverConfig(near=[-1, 0], far=[-1, 0], steps=5, batch_size=4, train_windows=16,
                                                  eval_windows=8),
                          eval_windows=8, llc=LLCConfig(chains=2, draws=10, batch_size=4, epsilon=1e-4, gamma=100.0),
                          llc_windows=32)
        record = run_lm(cfg, tmp / "lm_selfmodeling", device=ctx.device, progress=False)
        ok = all(math.isfinite(x) for x in (record["val_loss"], record["llc_mean"]))
        return {"ok": bool(ok), "val_loss": record["val_loss"], "llc_mean": record["llc_mean"], "seconds": record["seconds"]}

    ctx.part("selfmodeling_run_one", selfmodeling, need=3)
    ctx.part("gpt_train_lm_cotrain", gpt, need=3)
    ctx.part("forward_train_on_the_fly_and_ridge", forward_on_the_fly, need=3)
    ctx.part("lm_selfmodeling_run_one", lm_selfmodeling, need=3)
    parts = [ctx.record[k] for k in ("selfmodeling_run_one", "gpt_train_lm_cotrain", "forward_train_on_the_fly_and_ridge",
                                     "lm_selfmodeling_run_one")]
    ctx.record["all_ok"] = all(p.get("ok") is True for p in parts)


# ---------------------------------------------------------------------------- 7. the paper's toy GPT experiment
def sec_gpt_toy(ctx: Ctx) -> None:
    corpus = Path(os.environ.get(CORPUS_VARIABLE) or DEFAULT_CORPUS)
    if not corpus.is_file():
        ctx.record["skipped"] = (f"no corpus file at {corpus}: write it with `python benchmarks/export_corpus.py` and carry "
                                 "benchmarks/data/ along with the checkout")
        return
    import dataclasses

    from selfmodels.forward.config import RunConfig, load_preset
    from selfmodels.forward.pipeline import run

    replace = dataclasses.replace
    # The `paper-toy` preset (`--preset paper-toy`, read from its file): the paper's 4 x 256 GPT, its forward model
    # co-trained on 0 -> 1, snapshots by tokens seen. Overridden: its steps (to fit the time box) and its analyses (off:
    # no sweeps, no analyses); the corpus is the exported offline text (the GPU machine has no data packages).
    cfg = load_preset("gpt-paper-toy", RunConfig, "gpt")
    lm_steps, fwd_steps = (6, 4) if ctx.quick else (3000, 200)
    tokens_per_step = cfg.subject.lm.batch_size * cfg.subject.gpt.block_size
    overridden = {"subject.lm.steps": [cfg.subject.lm.steps, lm_steps], "train.steps": [cfg.train.steps, fwd_steps],
                  "sweeps.capacity": [cfg.sweeps.capacity, []], "analysis_sequences": [cfg.analysis_sequences, 0],
                  "subject.snapshot_tokens": [cfg.subject.snapshot_tokens,
                                              [n for n in cfg.subject.snapshot_tokens if n <= lm_steps * tokens_per_step]],
                  "corpus.corpus": [cfg.corpus.corpus, str(corpus)]}
    cfg = replace(cfg, subject=replace(cfg.subject, lm=replace(cfg.subject.lm, steps=lm_steps, eval_every=1000),
                                       snapshot_tokens=overridden["subject.snapshot_tokens"][1]),
                  train=replace(cfg.train, steps=fwd_steps), sweeps=replace(cfg.sweeps, capacity=[]), analysis_sequences=0,
                  corpus=replace(cfg.corpus, corpus=str(corpus)))
    if ctx.quick:  # the CPU dry run: a 2 x 32 GPT on a slice of the corpus (sizes overridden too, and said so)
        overridden["quick dry run"] = "GPT 2 x 2 x 32, context 32, batch 4, 512-token BPE, 200k chars, 16 / 4 windows"
        overridden["subject.snapshot_tokens"][1] = [256]
        cfg = replace(cfg, subject=replace(cfg.subject, gpt=replace(cfg.subject.gpt, n_layer=2, d_model=32, n_head=2, block_size=32),
                                           lm=replace(cfg.subject.lm, eval_every=2, eval_batches=2, batch_size=4),
                                           snapshot_tokens=[256]),
                      corpus=replace(cfg.corpus, max_chars=200_000, vocab_size=512), model=replace(cfg.model, d_head=16),
                      seq_len=32, train_sequences=16, eval_sequences=4, eval_batch=4)
    ctx.record["preset"] = "paper-toy"
    ctx.record["overridden"] = {k: (v if isinstance(v, str) else {"preset": v[0], "here": v[1]}) for k, v in overridden.items()}
    gpt, steps = cfg.subject.gpt, cfg.subject.lm.steps
    out = Path(tempfile.mkdtemp(prefix="gpu_check_gpt_toy_"))
    os.environ["SELFMODELS_CACHE"] = str(out / "cache")  # a fresh GPT: nothing from another run's cache
    began = time.perf_counter()
    r = run(cfg, out / "run", device_name=str(ctx.device), progress=False)
    seconds = time.perf_counter() - began
    sub, training = r["substitution"], r["subject"]["training"]
    mlp_embed = (r.get("baseline_mlp_sources") or [{}])[0]
    ctx.record.update(
        corpus=str(corpus), gpt={"n_layer": gpt.n_layer, "d_model": gpt.d_model, "params": r["subject"]["params"]},
        lm_steps=steps, lm_batch=cfg.subject.lm.batch_size, seq_len=cfg.seq_len, val_loss=training["val_loss"],
        pair=[cfg.source, cfg.target], forward_params=r["forward_model"]["params"], cosine=r["cosine"],
        skip_cosine=r["skip_cosine"], delta_r2=r["delta_r2"], kl_substituted=sub["kl_substituted"],
        kl_skipped=sub["kl_skipped"], recovery=sub["recovery"], pipeline_seconds=seconds,
        baseline_mlp_cosine=(r.get("baseline_mlp") or {}).get("cosine"), baseline_mlp_from_embed_cosine=mlp_embed.get("cosine"),
        snapshots=[{k: s[k] for k in ("tokens", "step", "val_loss", "train_loss", "skip_kl")} for s in training.get("snapshots") or []],
        lm_tokens=training["tokens_seen"], pipeline_tokens_per_s=training["tokens_seen"] / seconds,  # GPT training + the rest
        paper={k: r["paper"].get(k) for k in ("cosine", "kl_substituted", "kl_skipped", "recovery", "baseline_mlp_cosine")})


# ---------------------------------------------------------------------------- 8. pytest smoke test
def sec_pytest_smoke(ctx: Ctx) -> None:
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        ctx.record["skipped"] = "pytest is not installed for this Python"
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/subjects/test_contract.py"]
    keep = ["llama"] if ctx.quick else []  # the dry run: one family
    if importlib.util.find_spec("transformer_lens") is None:  # an optional extra, maybe not on the GPU machine
        keep.append("not tl-")
        ctx.record["deselected"] = "the TransformerLens kinds (tl-*): transformer_lens is not installed for this Python"
    if keep:
        cmd += ["-k", " and ".join(keep)]
    limit = max(1.0, min(60.0, ctx.left() - 2))
    ctx.record.update(command=" ".join(cmd[1:]), time_box_s=round(limit, 1))
    status, out = ctx.command(cmd, timeout=limit)
    if status is None:
        ctx.record.update(skipped=f"pytest did not finish within {limit:.0f} s", output_tail=out[-2000:])
        return
    lines = [line for line in out.strip().splitlines() if line.strip()]
    ctx.record.update(returncode=status, passed=status == 0, summary=lines[-1] if lines else "")
    if status != 0:
        ctx.record.update(error=f"pytest failed (status {status}): {ctx.record['summary']}", output_tail=out[-2000:])


SECTION_FUNCS = {"environment": sec_environment, "matmul_peak": sec_matmul_peak, "llc": sec_llc,
                 "forward_train": sec_forward_train, "forward_compile": sec_forward_compile,
                 "subject_throughput": sec_subject_throughput, "peers": sec_peers, "multi_gpu": sec_multi_gpu,
                 "training_loops": sec_training_loops,
                 "gpt_toy": sec_gpt_toy, "pytest_smoke": sec_pytest_smoke}

def child(args) -> int:
    record_path = Path(args.record)
    try:
        deadline = args.deadline if args.deadline is not None else time.monotonic() + 60
        ctx = Ctx(args.child, args.device, args.quick, deadline, record_path, use_torch=args.child != "pytest_smoke")
    except Exception as exc:  # noqa: BLE001 - torch itself does not import
        _write_json(record_path, {"section": args.child, "error": f"{type(exc).__name__}: {exc}",
                                  "traceback": traceback.format_exc()[-3000:], "seconds": 0})
        return 0
    ctx.record["device"] = str(ctx.device)
    if args.child not in ("environment", "pytest_smoke") and args.device.startswith("cuda") and not ctx.cuda:
        ctx.record["skipped"] = ctx.no_cuda_reason()
    else:
        try:
            SECTION_FUNCS[args.child](ctx)
        except TimeBox as exc:
            ctx.record.setdefault("skipped", str(exc))
        except Exception as exc:  # noqa: BLE001
            ctx.record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            ctx.record["traceback"] = traceback.format_exc()[-3000:]
    ctx.finish()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run)")
    p.add_argument("--quick", action="store_true", help="small shapes and few steps (the CPU dry run of the tests)")
    p.add_argument("--out", default=None, help="JSON file (default: $OUT/gpu_check.json if $OUT is set, else gpu_check.json)")
    p.add_argument("--budget", type=float, default=None, help="total seconds (default 280; 100 with --quick)")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of: {','.join(NAMES)}")
    p.add_argument("--corpus", default=None, help=f"text file for gpt_toy (default {DEFAULT_CORPUS.relative_to(ROOT)})")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--record", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)  # time.monotonic() value
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.budget is None:
        args.budget = 100.0 if args.quick else 280.0  # quick: every section some numbers on a slow 2-core CPU
    parent = Parent(args)
    rc = parent.run()
    print(f"[gpu_check] wrote {parent.out}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
