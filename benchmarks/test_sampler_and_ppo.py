"""Rollout speed: our sampler against transformers' generate, one PPO iteration against one of TRL's RLOOTrainer,
and one GRPO iteration against one of TRL's GRPOTrainer.

(a) bench.sampling.sample against `model.generate(do_sample=True, top_k=0)` on the same model,
    the same 64 prompts of 8 tokens and 48 new tokens each; eos is disabled on both sides so
    every row samples exactly 48 tokens.
(b) One iteration of online RL on the same policy, reference and reward model (the default
    `sentiment` task's shape, built from a config), 64 completions of 48 tokens, minibatches of
    16, 4 optimisation passes (16 optimizer steps):
      ours  PPO-GT's fit() for one update with the reward model as its reward: rollout, reward
            model scores, reference log-probs, GAE, 16 clipped PPO steps (value head included);
      TRL   RLOOTrainer.train() for one generation (16 prompts x 4 generations, steps_per_generation
            4, num_iterations 4): generation, reward model scores, reference and old log-probs,
            16 steps. PPOTrainer left TRL after 1.12; RLOO is its closest online trainer.
    Both sides include their set-up (optimizer, value head / dataloader) once per iteration.
(c) One GRPO iteration on the same policy, reference, reward model and prompts: 16 prompts x 4
    completions of 48 tokens, group-normalised advantages, beta 0.04 (the k3 KL term, so both load
    the reference), loss_type grpo, one pass in minibatches of 16 (4 optimizer steps):
      ours  grpo's fit() for one update (bench.online's rollout, then the GRPO loss);
      TRL   GRPOTrainer.train() for one generation (steps_per_generation 4, num_iterations 1).

Runs alternate in one process with a fixed thread count: every round runs the peer (timed here,
inside pytest-benchmark's untimed `setup`) and then ours (timed by pytest-benchmark). The printed
ratio is ours / peer; nothing here asserts a time. Run with `make bench` or
    pytest benchmarks/test_sampler_and_ppo.py --benchmark-enable -s
"""

from __future__ import annotations

import copy
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
"""Torch threads of both sides (and of the matmul peak): BENCH_THREADS=1 measures what one `--jobs 2` run has."""
ROUNDS, WARMUP = 5, 1
PROMPTS, PROMPT_TOKENS, NEW_TOKENS = 64, 8, 48
MINIBATCH, EPOCHS = 16, 4
# The default `sentiment` task's policy shape (GPT-2, 3 x 192, byte-level BPE of 4096 tokens) and activation (GELU's
# tanh form as one kernel, as the task's policy and every model bench loads has it: bench.device.fused_gelu).
SHAPE = dict(n_layer=3, n_embd=192, n_head=6, vocab_size=4096, n_positions=128, activation_function="gelu_pytorch_tanh")


def _policy():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        **SHAPE, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=1
    )
    return GPT2LMHeadModel(config).eval()


def _word_tokenizer():
    """Word w<i> is token i, so sampled ids decode to text that encodes back to the same ids; 0 is eos, 1 is pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<pad>": 1, **{f"w{i}": i for i in range(2, SHAPE["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def _prompt_ids(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(2, SHAPE["vocab_size"], (n, PROMPT_TOKENS), generator=g).tolist()


def _report(name: str, benchmark, peer_name: str, peer_times: list[float]) -> None:
    peer = peer_times[WARMUP:]
    peer_min, peer_median = min(peer), statistics.median(peer)
    our_min, our_median = benchmark.stats.stats.min, benchmark.stats.stats.median
    benchmark.extra_info.update(
        peer=peer_name,
        peer_min_s=peer_min,
        peer_median_s=peer_median,
        ratio_min=our_min / peer_min,
        ratio_median=our_median / peer_median,
        threads=THREADS,
    )
    print(f"\n{name}, {THREADS} threads, {ROUNDS} rounds:")
    print(f"  ours  min {our_min:.3f} s  median {our_median:.3f} s")
    print(f"  {peer_name:<5} min {peer_min:.3f} s  median {peer_median:.3f} s")
    print(f"  ours / {peer_name}: {our_min / peer_min:.2f} (min), {our_median / peer_median:.2f} (median)")


def test_sampler_vs_generate(benchmark):
    from bench.sampling import sample

    torch.set_num_threads(THREADS)
    model = _policy()
    prompts = _prompt_ids(PROMPTS)
    input_ids = torch.tensor(prompts)  # equal lengths: no padding on either side
    peer_times, lengths = [], {}

    def generate():
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                eos_token_id=None,
                pad_token_id=1,
            )
        peer_times.append(time.perf_counter() - start)
        lengths["generate"] = out.shape[1] - PROMPT_TOKENS

    def ours():
        out = sample(
            model, prompts, max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=1, seed=0, batch_size=PROMPTS
        )
        lengths["ours"] = max(map(len, out))

    benchmark.pedantic(ours, setup=generate, rounds=ROUNDS, warmup_rounds=WARMUP)
    assert lengths == {"generate": NEW_TOKENS, "ours": NEW_TOKENS}  # the same work on both sides
    _report(
        f"sampling {PROMPTS} x {NEW_TOKENS} tokens, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters",
        benchmark,
        "HF",
        peer_times,
    )


def _reward_model(policy, tok):
    from bench.reward import from_policy

    return from_policy(policy, tok, seed=0).eval().requires_grad_(False)


def _trl_trainer(kind: str, policy_dir, reward_model, tok, tmp_path, generations: int, epochs: int, **options):
    """TRL's RLOOTrainer or GRPOTrainer (`kind`) for one generation of PROMPTS completions: the prompts' groups of
    `generations`, `epochs` passes in minibatches of MINIBATCH, NEW_TOKENS each; `options` are the trainer's own."""
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback

    text = lambda ids: " ".join(f"w{i}" for i in ids)  # noqa: E731
    prompts = [{"prompt": text(p)} for p in _prompt_ids(PROMPTS // generations)]
    args = getattr(trl, f"{kind}Config")(
        output_dir=str(tmp_path),
        per_device_train_batch_size=MINIBATCH,
        gradient_accumulation_steps=1,
        steps_per_generation=PROMPTS // MINIBATCH,
        num_generations=generations,
        num_iterations=epochs,
        max_steps=epochs * PROMPTS // MINIBATCH,
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        disable_dropout=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        **options,
    )
    trainer = getattr(trl, f"{kind}Trainer")(
        model=str(policy_dir),
        reward_funcs=reward_model,
        args=args,
        processing_class=tok,
        reward_processing_classes=tok,
        train_dataset=Dataset.from_list(prompts),
    )
    trainer.remove_callback(PrinterCallback)  # its end-of-train summary would flood the report
    return trainer


def _context(base, tok, reward_model, prompts: list[str], train, rows: list, tmp_path):
    """A run context for one online iteration of ours: a fresh copy of `base` to train, the reward model as the
    reward, `prompts` as the training prompts; the log rows go to `rows`."""
    from pathlib import Path

    from bench.contracts import Context, Generation
    from bench.reward import score

    return Context(
        task=None,
        policy=copy.deepcopy(base).requires_grad_(True),
        tokenizer=tok,
        reference=base,
        train=train,
        seed=0,
        log=rows.append,
        checkpoint_dir=Path(tmp_path / "ours"),
        cache_dir=tmp_path,
        sft_examples=[],
        preferences=[{"prompt": p, "chosen": "w2", "rejected": "w3"} for p in prompts],
        test_preferences=[],
        generation=Generation(max_new_tokens=NEW_TOKENS),
        reward=lambda p, c: score(reward_model, tok, p, c, max_length=128),
    )


def test_ppo_iteration_vs_trl_rloo(benchmark, tmp_path):

    from bench.algorithms.ppo import PPOGT, Config
    from bench.train import TrainConfig

    torch.set_num_threads(THREADS)
    tok = _word_tokenizer()
    base = _policy()
    base.save_pretrained(tmp_path / "policy")  # TRL loads policy and reference by path
    tok.save_pretrained(tmp_path / "policy")
    reward_model = _reward_model(base, tok)
    trainer = _trl_trainer(
        "RLOO", tmp_path / "policy", copy.deepcopy(reward_model), tok, tmp_path / "trl", 4, EPOCHS, beta=0.05
    )

    prompts = [" ".join(f"w{i}" for i in p) for p in _prompt_ids(PROMPTS)]
    train = TrainConfig(lr=1e-5, batch_size=MINIBATCH, max_steps=1, warmup_steps=0, log_every=1, max_length=128)
    config = Config(rollout_batch_size=PROMPTS, ppo_epochs=EPOCHS, max_new_tokens=NEW_TOKENS)
    rows, peer_times = [], []

    def rloo_iteration():
        start = time.perf_counter()
        trainer.train()
        peer_times.append(time.perf_counter() - start)

    def ppo_iteration():
        PPOGT(config).fit(_context(base, tok, reward_model, prompts, train, rows, tmp_path))

    base.requires_grad_(False)
    benchmark.pedantic(ppo_iteration, setup=rloo_iteration, rounds=ROUNDS, warmup_rounds=WARMUP)
    assert rows[-1]["sampled_tokens"] > PROMPTS * NEW_TOKENS * 0.9  # nearly all rows ran to the length limit
    steps = trainer.state.global_step
    _report(
        f"one online-RL iteration: {PROMPTS} completions x {NEW_TOKENS} tokens, {EPOCHS} epochs of minibatch "
        f"{MINIBATCH} (TRL steps per iteration: {steps})",
        benchmark,
        "TRL",
        peer_times,
    )


GRPO_GENERATIONS = 4


def test_grpo_iteration_vs_trl_grpo(benchmark, tmp_path):

    from bench.algorithms.grpo import GRPO, Config
    from bench.train import TrainConfig

    torch.set_num_threads(THREADS)
    tok = _word_tokenizer()
    base = _policy()
    base.save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    reward_model = _reward_model(base, tok)
    trainer = _trl_trainer(
        "GRPO",
        tmp_path / "policy",
        copy.deepcopy(reward_model),
        tok,
        tmp_path / "trl",
        GRPO_GENERATIONS,
        1,
        beta=0.04,
        loss_type="grpo",
        scale_rewards="group",
    )

    prompts = [" ".join(f"w{i}" for i in p) for p in _prompt_ids(PROMPTS // GRPO_GENERATIONS)]
    train = TrainConfig(lr=1e-5, batch_size=MINIBATCH, max_steps=1, warmup_steps=0, log_every=1, max_length=128)
    config = Config(
        reward="gold", k=GRPO_GENERATIONS, prompts_per_update=len(prompts), max_new_tokens=NEW_TOKENS, beta=0.04
    )
    rows, peer_times = [], []

    def trl_iteration():
        start = time.perf_counter()
        trainer.train()
        peer_times.append(time.perf_counter() - start)

    def grpo_iteration():
        GRPO(config).fit(_context(base, tok, reward_model, prompts, train, rows, tmp_path))

    base.requires_grad_(False)
    benchmark.pedantic(grpo_iteration, setup=trl_iteration, rounds=ROUNDS, warmup_rounds=WARMUP)
    assert rows[-1]["reward_calls"] == PROMPTS and rows[-1]["sampled_tokens"] > PROMPTS * NEW_TOKENS * 0.9
    _report(
        f"one GRPO iteration: {PROMPTS} completions x {NEW_TOKENS} tokens, groups of {GRPO_GENERATIONS}, one pass "
        f"in minibatches of {MINIBATCH} (TRL steps per iteration: {trainer.state.global_step})",
        benchmark,
        "TRL",
        peer_times,
    )
