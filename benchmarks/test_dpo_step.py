"""One DPO optimisation step: ours (DPO.train_step) against TRL 1.16's DPOTrainer, same model, batch and optimizer.

Both sides start from identical weights (separate copies: TRL patches its models' forward), score
the same 8 pairs of 128 tokens with a reference forward each step (TRL with
precompute_ref_log_probs=False), and take an Adam step (no weight decay, constant
schedule) after clipping the gradient norm to 1. Dropout is off on both sides.

Steps alternate in one process with a fixed thread count: every round runs one TRL step (timed
here, inside pytest-benchmark's untimed `setup`) and then one of ours (timed by pytest-benchmark).
TRL's step is its own `training_step` (loss, metrics, backward) followed by the clip, optimizer,
scheduler and zero-grad calls its Trainer loop makes. The printed ratio is ours / TRL; nothing here
asserts a time. Run with `make bench` or
    pytest benchmarks/test_dpo_step.py --benchmark-enable -s
"""

from __future__ import annotations

import copy
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

THREADS = 2
ROUNDS, WARMUP = 5, 1
PAIRS, PROMPT_TOKENS, COMPLETION_TOKENS = 8, 32, 96
# GPT-2-small shape with a smaller vocabulary (91.5M parameters), built from a config.
SHAPE = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=8192, n_positions=256)
BETA, LR = (
    0.1,
    1e-6,
)  # the paper's lr: losses stay informative over the rounds, so the parity check below means something


def _model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        **SHAPE, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=1
    )
    return GPT2LMHeadModel(config)


def _word_tokenizer(vocab_size: int):
    """Word w<i> is token i, so a text spells exactly the ids we choose; id 0 is eos, id 1 is pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<pad>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def _pairs():
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(2, SHAPE["vocab_size"], (n,), generator=g).tolist()  # noqa: E731
    # Completions end in eos, as TRL would append it otherwise.
    return [
        (ids(PROMPT_TOKENS), ids(COMPLETION_TOKENS - 1) + [0], ids(COMPLETION_TOKENS - 1) + [0]) for _ in range(PAIRS)
    ]


def _trl_trainer(model, ref_model, pairs, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    text = lambda ids: " ".join(f"w{i}" if i else "<eos>" for i in ids)  # noqa: E731
    rows = [{"prompt": text(p), "chosen": " " + text(c), "rejected": " " + text(r)} for p, c, r in pairs]
    args = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=PAIRS,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=BETA,
        loss_type=["sigmoid"],
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        dataloader_num_workers=0,
        precompute_ref_log_probs=False,
        disable_dropout=True,
        max_length=None,
        seed=0,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=_word_tokenizer(SHAPE["vocab_size"]),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=ROUNDS + WARMUP)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop, which we step through by hand
    return trainer


def test_dpo_step_ours_vs_trl(benchmark, tmp_path):
    from bench.algorithms.dpo import DPO

    torch.set_num_threads(THREADS)
    base = _model()
    pairs = _pairs()
    trainer = _trl_trainer(copy.deepcopy(base), copy.deepcopy(base), pairs, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (2 * PAIRS, PROMPT_TOKENS + COMPLETION_TOKENS)  # the same sequences as ours

    ours = DPO(base, copy.deepcopy(base), beta=BETA, learning_rate=LR, max_grad_norm=1.0)
    prompt, chosen, rejected = (torch.tensor(x) for x in zip(*pairs))

    trl_times, trl_losses, our_losses = [], [], []

    def trl_step():
        model = trainer.model
        start = time.perf_counter()
        loss = trainer.training_step(model, batch)
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        trl_times.append(time.perf_counter() - start)
        trl_losses.append(float(loss))

    def our_step():
        our_losses.append(ours.train_step(prompt=prompt, chosen=chosen, rejected=rejected)["loss"])

    benchmark.pedantic(our_step, setup=trl_step, rounds=ROUNDS, warmup_rounds=WARMUP)

    trl_times = trl_times[WARMUP:]
    trl_min, trl_median = min(trl_times), statistics.median(trl_times)
    our_min, our_median = benchmark.stats.stats.min, benchmark.stats.stats.median
    benchmark.extra_info.update(
        trl_min_s=trl_min,
        trl_median_s=trl_median,
        ratio_min=our_min / trl_min,
        ratio_median=our_median / trl_median,
        threads=THREADS,
    )
    print(
        f"\nDPO step, {PAIRS} pairs x {PROMPT_TOKENS + COMPLETION_TOKENS} tokens, "
        f"{sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters, {THREADS} threads, {ROUNDS} rounds:"
    )
    print(f"  ours  min {our_min:.3f} s  median {our_median:.3f} s")
    print(f"  TRL   min {trl_min:.3f} s  median {trl_median:.3f} s")
    print(f"  ours / TRL: {our_min / trl_min:.2f} (min), {our_median / trl_median:.2f} (median)")
    print(f"  losses, ours: {[round(x, 6) for x in our_losses]}")
    print(f"  losses, TRL:  {[round(x, 6) for x in trl_losses]}")
    # Not a timing assertion: the two sides must be doing the same optimisation for the ratio to mean anything.
    # (The first loss is log 2 on both sides, policy == reference; the later ones follow each side's updates.)
    assert our_losses == pytest.approx(trl_losses, abs=1e-4)
