"""The one-shot GPU check (benchmarks/gpu_check.py) runs end to end as a CPU dry run and reports every section."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["environment", "matmul_peak", "llc", "forward_train", "forward_compile", "subject_throughput",
            "peers", "multi_gpu", "training_loops", "gpt_toy", "pytest_smoke"]


def _has_numbers(record) -> bool:
    """Some finished measurement: a number anywhere below the record (besides the bookkeeping keys)."""
    if isinstance(record, dict):
        return any(_has_numbers(v) for k, v in record.items() if k not in ("seconds", "wall_s", "section"))
    if isinstance(record, list):
        return any(_has_numbers(v) for v in record)
    return isinstance(record, (int, float)) and not isinstance(record, bool)


@pytest.mark.slow
def test_quick_cpu_dry_run_reports_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["HF_HUB_OFFLINE"] = "1"
    corpus = tmp_path / "corpus.txt"  # what benchmarks/export_corpus.py writes, in small
    corpus.write_text("\n\n".join(f"The quick brown fox ({i}) jumped over the lazy dog; the dog slept [{i % 7}]." for i in range(3000)))
    began = time.monotonic()
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                          "--out", str(out), "--corpus", str(corpus)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=240)
    elapsed = time.monotonic() - began
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["finished"] is True and report["device"] == "cpu" and report["quick"] is True
    assert elapsed < 130, f"the quick dry run took {elapsed:.0f} s"  # its budget is 100 s
    assert [r["section"] for r in report["sections"]] == SECTIONS
    for record in report["sections"]:
        name = record["section"]
        assert "error" not in record, (name, record.get("error"), record.get("traceback") or record.get("log_tail"))
        if "skipped" in record:
            assert isinstance(record["skipped"], str) and record["skipped"], name
        else:
            assert _has_numbers(record), name
        for key, part in record.items():  # parts: numbers, or a reason; never an exception
            if isinstance(part, dict):
                assert "error" not in part, (name, key, part.get("error"), part.get("traceback"))
    by_name = {r["section"]: r for r in report["sections"]}
    # CUDA-only measurements are skipped with a reason on the CPU.
    assert "CUDA only" in by_name["environment"]["gpu"]["skipped"]
    assert "CUDA only" in by_name["matmul_peak"]["tf32"]["skipped"]
    assert "skipped" in by_name["forward_compile"]
    assert "estimate_100M_tokens_7_to_8" in by_name["subject_throughput"] or "skipped" in by_name["subject_throughput"]
