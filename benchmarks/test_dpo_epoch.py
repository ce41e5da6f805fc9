"""One DPO epoch on the default sentiment task: ours (the harness's fit) against TRL 1.16's DPOTrainer, and against
the machine's matmul peak measured in the same run.

Both sides train the task's starting policy on its 4,488 preference pairs for one epoch: batch 32, Adam(W) at lr
1e-4 without weight decay, 10 warmup steps then constant, gradient-norm clip 1, beta 0.1, sigmoid loss, at most 128
tokens per sequence, dropout off. Both score the reference once before training (ours: the cached reference
log-probs, from a cold cache here; TRL: precompute_ref_log_probs=True), and that time is included.
TRL tokenizes the texts itself and appends eos to each completion, so it trains on one more token per sequence.

Printed: each side's wall time and their ratio (ours / TRL), our achieved FLOP/s (the usual 6 x parameters x
trained tokens; and 8 x, with the reference's forward pass over the same tokens, which the timed epoch also
runs) and the fp32 matmul peak of the same threads (a 2048^3 matmul, best of several, measured before
and after), and our share of it. Nothing asserts a time. Needs the default task build (cached under
$BENCH_CACHE_DIR; about two minutes to build with the shipped policy). Run with `make bench` or
    pytest benchmarks/test_dpo_epoch.py --benchmark-enable -s
"""

from __future__ import annotations

import copy
import os
import time
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
"""Torch threads of both sides (and of the matmul peak): BENCH_THREADS=1 measures what one `--jobs 2` run has."""
SCALE = os.environ.get("BENCH_DPO_EPOCH_SCALE", "default")
"""The task's scale: "tiny" only to try the benchmark out in seconds."""
BATCH, LR, WARMUP, MAX_LENGTH, BETA = 32, 1e-4, 10, 128, 0.1


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n x n matmul on this process's threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _task():
    from bench.cli import default_cache_dir
    from bench.tasks.sentiment import Config, Sentiment

    task = Sentiment(Config(scale=SCALE), default_cache_dir())
    task.build()
    return task


def _ours(task, policy, reference, pairs, tokenizer, tmp_path) -> tuple[float, list[dict]]:
    from bench.algorithms.dpo import DPO
    from bench.train import TrainConfig

    rows: list[dict] = []
    ctx = SimpleNamespace(
        task=task,
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        preferences=pairs,
        train=TrainConfig(lr=LR, batch_size=BATCH, epochs=1.0, warmup_steps=WARMUP, max_length=MAX_LENGTH),
        cache_dir=tmp_path / "ours",  # a cold reference cache: its scoring is part of the time, as TRL's precompute
        seed=0,
        log=rows.append,
        checkpoint_dir=None,
        on_step=None,
    )
    start = time.perf_counter()
    DPO(config=None, beta=BETA).fit(ctx)
    return time.perf_counter() - start, rows


def _trl(policy, reference, pairs, tokenizer, tmp_path) -> float:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=LR,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=WARMUP,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=MAX_LENGTH,
        precompute_ref_log_probs=True,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        dataloader_num_workers=0,
        disable_dropout=True,
        seed=0,
    )
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def test_dpo_epoch_ours_vs_trl_and_the_matmul_peak(benchmark, tmp_path):
    pytest.importorskip("trl")
    torch.set_num_threads(THREADS)
    task = _task()
    pairs = task.preference_data("train")
    base, tokenizer = task.load_policy()
    peak_before = matmul_peak_gflops()
    reference = copy.deepcopy(base).requires_grad_(False)  # frozen, as `bench run` hands it to the algorithm
    ours_s, rows = benchmark.pedantic(
        _ours, args=(task, copy.deepcopy(base), reference, pairs, tokenizer, tmp_path), rounds=1
    )
    trl_s = _trl(copy.deepcopy(base), copy.deepcopy(base), pairs, tokenizer, tmp_path)
    peak = max(peak_before, matmul_peak_gflops())
    tokens = sum(r.get("tokens", 0) for r in rows)
    parameters = sum(p.numel() for p in base.parameters())
    achieved = 6 * parameters * tokens / ours_s / 1e9
    # The epoch also runs the reference over the same sequences once (forward only, 2 N T), inside the time.
    with_reference = 8 * parameters * tokens / ours_s / 1e9
    benchmark.extra_info.update(
        ours_s=ours_s,
        trl_s=trl_s,
        ratio=ours_s / trl_s,
        gflops=achieved,
        gflops_with_reference=with_reference,
        peak_gflops=peak,
        share=achieved / peak,
        share_with_reference=with_reference / peak,
    )
    print(f"\nDPO epoch, {len(pairs)} pairs, batch {BATCH}, {parameters / 1e6:.2f}M parameters, {THREADS} threads:")
    print(f"  ours {ours_s:.1f} s, TRL {trl_s:.1f} s: ours / TRL {ours_s / trl_s:.2f}")
    print(
        f"  ours: {tokens} trained tokens, {achieved:.1f} GFLOP/s (6 N T) = {achieved / peak:.0%} of the "
        f"{peak:.0f} GFLOP/s fp32 matmul peak measured in this run"
    )
    print(
        f"  with the reference's forward over the same tokens (8 N T in all): {with_reference:.1f} GFLOP/s = "
        f"{with_reference / peak:.0%} of the peak"
    )
    assert rows and rows[-1]["step"] == -(-len(pairs) // BATCH)  # one whole epoch was trained
    if SCALE == "default":
        assert rows[-1]["loss"] < 0.69  # and learned something (log 2 at the start)
