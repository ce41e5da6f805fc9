"""LLM-as-judge win rate of the policy against a baseline: the DPO paper's GPT-4 evaluation.

For each evaluation prompt a judge reads the prompt and two completions, the policy's and the
baseline's, labelled A and B in an order drawn per comparison from the run's seed, and answers
in a fixed format ("Comparison: <one sentence>" then "Preferred: A"). The win rate is the share
of comparisons the policy wins, ties counting one half, with a bootstrap confidence interval
over prompts (arXiv:2305.18290, section 6 and appendix C.2).

The judge is any chat model behind the OpenAI chat-completions API (OpenAI, vLLM, a llama.cpp
server ...), or `oracle`: the task's gold reward, preferring the completion it scores higher.
It is opt-in (`--set judge.model=gpt-4-0314`): without a model the evaluator does not apply,
so default runs never touch the network.

Baselines: the evaluation prompts' reference completions (TL;DR reference summaries, HH chosen
responses, CNN/DM highlights), the samples of another complete run on the same prompts (head to
head), or completions sampled from the starting (SFT) policy.

Judges are biased toward the first position and toward longer answers. Every pair is judged in
both orders by default (a verdict that flips with the order is a tie), and the record carries
position consistency, the share of verdicts preferring position A, the win rate split by whether
the policy's completion is the longer one, a length-controlled win rate (AlpacaEval 2's: a logistic
model of the verdict on the standardised length difference, predicted at zero difference;
bench.stats.length_controlled_win_rate) with a warning when it differs from the raw one by more
than LC_WARNING, and agreement with the gold reward where the task has one. Before the first call
the planned calls, tokens and price are printed; `judge.dry_run=true` stops there.

This file is the evaluator: its settings, which completions are compared with which, and the
aggregates. Templates, verdict parsing, the verdict cache (a rerun costs no calls) and the API
calls are evaluators/judge_client.py's; the statistics are bench/stats.py's.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from bench import distributed, seeds
from bench.contracts import Evaluation
from bench.errors import UserError
from bench.evaluators.judge_client import ChatJudge, VerdictCache, load_template, public_url
from bench.stats import bootstrap_mean_ci, by_prompt, length_controlled_win_rate, pairwise_win, per_prompt_means

DEFAULT_TEMPLATE = "continuation-positive"
"""For tasks without a judge prompt (e.g. sentiment): which continuation is more positive."""
BASELINES = ("auto", "reference", "run", "sft")
LC_WARNING = 0.10
"""A length-controlled win rate this far from the raw one gets a warning line: the judge's length bias moves it."""


@dataclass
class Config:
    """Options of the judge (`--set judge.KEY=VALUE`)."""

    model: str = ""
    """Judge model as the API names it (the paper used gpt-4-0314); `oracle` compares gold rewards; empty: no judge."""
    base_url: str = ""
    """API root, e.g. http://127.0.0.1:8080/v1 for a local server; empty uses $OPENAI_BASE_URL, else OpenAI."""
    api_key_env: str = "OPENAI_API_KEY"
    """NAME of the environment variable holding the API key (the key itself is never stored)."""
    template: str = ""
    """Built-in prompt name or a template file (see bench/judge_prompts/README.md); empty uses the task's."""
    baseline: str = "auto"
    """What the policy is compared with: reference (eval prompts' reference), run (judge.baseline_run), sft (samples
    of the starting policy), auto (run if given, else reference if every prompt has one, else sft)."""
    baseline_run: str = ""
    """Directory of a complete run on the same prompts, for a head-to-head comparison."""
    samples_per_prompt: int = 1
    """Completions judged per prompt (the first ones; the paper judged one); 0 judges all."""
    both_orders: bool = True
    """Judge every pair in both orders: the win is their mean (a flip is a tie, 1/2) and position consistency is
    reported; false halves the calls, one order drawn per pair from the run's seed."""
    logprobs: bool = False
    """Ask for token log-probs and score a verdict as P(policy's letter) / (P(A) + P(B)) at the verdict token (as
    AlpacaEval's weighted annotators), where the server returns them; the letter itself elsewhere."""
    dry_run: bool = False
    """Print the plan (calls, tokens, price estimate) and make no call; the record keeps the plan, not a win rate."""
    temperature: float = 0.0
    """Judge sampling temperature."""
    max_tokens: int = 256
    """Answer length limit of the judge in tokens."""
    parse_retries: int = 2
    """Extra requests when an answer does not follow the verdict format; then it counts as invalid."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout_s: float = 60.0
    """Seconds before a request counts as timed out (and is retried)."""
    max_retries: int = 6
    """Retries of a request after a timeout, a lost connection, 429 or 5xx."""
    backoff_s: float = 1.0
    """Wait before the first retry; doubles on each further one (a 429's Retry-After is honoured)."""
    max_backoff_s: float = 60.0
    """Longest wait between retries."""
    max_calls: int = 0
    """Cap on requests sent by this evaluation (retries included); 0 is no cap. Comparisons left count as not judged."""
    max_total_tokens: int = 0
    """Cap on prompt + completion tokens spent by this evaluation; 0 is no cap (requests in flight may overshoot it)."""
    price_prompt_per_1k: float = 0.0
    """USD per 1,000 prompt tokens, for the cost estimate (gpt-4-0314 was 0.03)."""
    price_completion_per_1k: float = 0.0
    """USD per 1,000 completion tokens, for the cost estimate (gpt-4-0314 was 0.06)."""
    bootstrap: int = 2000
    """Bootstrap resamples of the prompts for the 95% interval of the win rate; 0 skips it."""


# ---------------------------------------------------------------- statistics


BOOTSTRAP_STREAM = 0x6A756467
"""Mixed with the run's seed for the interval's resamples, so that they are a stream of their own."""


def _judged(values, index) -> tuple[list[float], list[int]]:
    """The values that were judged and are valid (NaN otherwise), and their prompts."""
    keep = [(v, i) for v, i in zip(values, index) if v == v]
    return [v for v, _ in keep], [i for _, i in keep]


def _rate(values, index) -> dict:
    return by_prompt(*_judged(values, index))


# ---------------------------------------------------------------- the evaluator


@dataclass
class _Pair:
    """A policy completion and the baseline completion it is compared with."""

    sample: int
    """Position of the policy's sample in the samples evaluated."""
    prompt_index: int
    """The evaluation prompt the sample answers."""
    slot: int
    """Which of the prompt's completions this is (0 for the first)."""
    prompt: str
    """The prompt as the policy saw it."""
    policy: str
    """The policy's completion."""
    baseline: str
    """The baseline's completion for the same prompt and slot."""
    query: str
    """What the judge reads as the prompt: the evaluation row's "query" (e.g. the post without the policy's
    "TL;DR:" cue, the user's question without the chat template) or else the prompt itself."""


class Judge:
    name = "judge"
    description = (
        "LLM-as-judge win rate vs a baseline (reference, another run, or SFT samples); opt-in: --set judge.model=..."
    )
    higher_is_better = True
    at_checkpoints = False  # paid calls: the final policy only
    Config = Config

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def enabled(self) -> bool:
        return bool(self.config.model.strip())

    def preflight(self) -> None:
        """Check the options, the key and the server before any training is spent (no judging)."""
        if not self.enabled():
            return  # not enabled for this run
        self._check()
        if self.config.model != "oracle":
            ChatJudge(self.config, VerdictCache(None)).ping()

    def evaluate(self, samples, ctx) -> Evaluation:
        # With several processes the main one alone calls the judge (and samples any baseline): one set of calls.
        return distributed.run_on_main(lambda: self._evaluate(samples, ctx))

    def _evaluate(self, samples, ctx) -> Evaluation:
        cfg = self._check()
        oracle = cfg.model == "oracle"
        if oracle and ctx.reward is None:
            raise UserError("judge.model=oracle needs a task with a gold reward; use a chat model as the judge")
        pairs, baseline_kind = self._pairs(samples, ctx)
        if ctx.reward is not None:
            prompts = [p.prompt for p in pairs]
            gold = [
                float(r) for r in ctx.reward(prompts + prompts, [p.policy for p in pairs] + [p.baseline for p in pairs])
            ]
            oracle_win = [pairwise_win(g, h) for g, h in zip(gold[: len(pairs)], gold[len(pairs) :])]
        else:
            oracle_win = None

        n, index = len(samples), [s.prompt_index for s in samples]
        win, first = [math.nan] * n, [math.nan] * n
        counts = {"pairs": len(pairs), "ties": 0, "invalid": 0, "failed": 0, "not_judged": 0}
        record = {"judge": cfg.model, "baseline": baseline_kind, "order_seed": ctx.seed}
        extra: dict[str, dict] = {}
        if oracle:
            for p, w in zip(pairs, oracle_win):
                win[p.sample] = w
                counts["ties"] += w == 0.5
        else:
            extra, record = self._chat(pairs, ctx, index, win, first, counts, oracle_win, record)

        if record.get("dry_run"):
            return Evaluation(aggregates=extra)
        rate = _rate(win, index)
        low, high = bootstrap_mean_ci(
            per_prompt_means(*_judged(win, index)), cfg.bootstrap, [ctx.seed, BOOTSTRAP_STREAM]
        )
        aggregates = {"judge_win_rate": {**rate, "ci_low": low, "ci_high": high, **counts, **record}}

        longer = {p.sample: len(p.policy.split()) - len(p.baseline.split()) for p in pairs}
        for name, keep in (("longer", lambda d: d > 0), ("shorter", lambda d: d < 0)):
            split = [win[i] if i in longer and keep(longer[i]) else math.nan for i in range(n)]
            aggregates[f"judge_win_rate_policy_{name}"] = _rate(split, index)
        judged = [i for i in range(n) if i in longer and win[i] == win[i]]
        lc = length_controlled_win_rate([win[i] for i in judged], [longer[i] for i in judged])
        lc["length"] = "words"
        if abs(lc["mean"] - rate["mean"]) > LC_WARNING:  # False for NaN
            lc["warning"] = True
            sys.stderr.write(
                f"judge: the length-controlled win rate {lc['mean']:.3f} differs from the raw {rate['mean']:.3f} by "
                f"more than {LC_WARNING:.2f}: the judge favours the {'longer' if lc['slope'] > 0 else 'shorter'} "
                "answer and the raw rate carries it\n"
            )
        aggregates["judge_win_rate_length_controlled"] = lc
        aggregates.update(extra)
        per_sample = {"judge_win": win}
        if not oracle and not cfg.both_orders:
            per_sample["judge_policy_first"] = first
        return Evaluation(per_sample=per_sample, aggregates=aggregates)

    # -- pieces of evaluate

    def _check(self) -> Config:
        cfg = self.config
        if cfg.baseline not in BASELINES:
            raise UserError(f"judge.baseline={cfg.baseline}: use one of {', '.join(BASELINES)}")
        for key in ("samples_per_prompt", "parse_retries", "max_retries", "max_calls", "max_total_tokens", "bootstrap"):
            if getattr(cfg, key) < 0:
                raise UserError(f"judge.{key}={getattr(cfg, key)}: cannot be negative")
        if cfg.concurrency < 1 or cfg.max_tokens < 1 or not cfg.timeout_s > 0:
            raise UserError("judge.concurrency and judge.max_tokens must be at least 1 and judge.timeout_s positive")
        if cfg.backoff_s < 0 or cfg.max_backoff_s < 0 or cfg.temperature < 0:
            raise UserError("judge.backoff_s, judge.max_backoff_s and judge.temperature cannot be negative")
        return cfg

    def _chat(self, pairs, ctx, index, win, first, counts, oracle_win, record):
        """Judge the pairs with the chat model; fills win/first/counts, returns (extra aggregates, record)."""
        cfg = self.config
        task = getattr(ctx, "eval_task", None) or ctx.task
        template = load_template(cfg.template or getattr(task, "judge_prompt", None) or DEFAULT_TEMPLATE)
        record = {
            **record,
            "template": template.name,
            "template_sha256": hashlib.sha256(template.text.encode()).hexdigest()[:16],
        }
        # The order of each comparison depends only on (seed, prompt, slot): reproducible, and the
        # same whatever else is judged, in whatever order the requests happen to finish.
        requests = []  # (pair number, policy shown first)
        for k, p in enumerate(pairs):
            if p.policy.strip() == p.baseline.strip():
                continue  # identical texts: a tie, no call
            if cfg.both_orders:
                requests += [(k, True), (k, False)]
            else:
                requests.append((k, random.Random(f"judge-order:{ctx.seed}:{p.prompt_index}:{p.slot}").random() < 0.5))
        texts = [
            template.render(
                pairs[k].query, *((pairs[k].policy, pairs[k].baseline) if pf else (pairs[k].baseline, pairs[k].policy))
            )
            for k, pf in requests
        ]
        cache = VerdictCache(Path(ctx.cache_dir) / "judge" / "verdicts.sqlite")
        try:
            client = ChatJudge(cfg, cache)
            plan = client.plan(texts)
            orders = "both orders" if cfg.both_orders else "one order each"
            sys.stderr.write(
                f"judge: {len(pairs)} comparisons, {len(texts)} prompts ({orders}): {plan['calls']} calls to "
                f"{public_url(client.base_url)} ({plan['cached']} cached), ~{plan['prompt_tokens_estimate']} prompt "
                f"tokens, at most {plan['completion_tokens_max']} answer tokens, ~${plan['cost_usd_estimate']:.4f} at "
                f"the set prices{'; dry run: no call made' if cfg.dry_run else ''}\n"
            )
            if cfg.dry_run:
                planned = {**plan, "comparisons": len(pairs), "prompts": len(texts), "dry_run": True}
                return {
                    "judge_plan": {
                        "mean": float(plan["calls"]),
                        "se": 0.0,
                        "n": len(pairs),
                        "unit": "calls",
                        "higher_is_better": None,
                        **planned,
                    }
                }, {**record, "dry_run": True}
            outcomes = client.judge(texts, template.verdict_key)
        finally:
            cache.close()

        by_pair: dict[int, list] = defaultdict(list)
        for (k, pf), out in zip(requests, outcomes):
            by_pair[k].append((pf, out))
        first_pos, agree, consistent = [math.nan] * len(win), [], []
        for k, p in enumerate(pairs):
            if k not in by_pair:
                win[p.sample] = 0.5
                counts["ties"] += 1
                continue
            results = by_pair[k]
            if not cfg.both_orders:
                first[p.sample] = float(results[0][0])  # recorded whether or not the verdict is usable
            status = next(
                (s for s in ("not_judged", "failed", "invalid") if any(o.status == s for _, o in results)), "ok"
            )
            if status != "ok":
                counts[status] += 1
                continue
            policy_won = [(o.verdict == "A") == pf for pf, o in results]
            # With log-probs: P(the policy's letter) at the verdict, where the server returned them.
            preference = [
                (o.prob_a if pf else 1 - o.prob_a) if cfg.logprobs and o.prob_a is not None else float(won)
                for (pf, o), won in zip(results, policy_won)
            ]
            win[p.sample] = sum(preference) / len(preference)
            counts["ties"] += win[p.sample] == 0.5
            first_pos[p.sample] = sum(o.verdict == "A" for _, o in results) / len(results)
            if cfg.both_orders:
                consistent.append((float(policy_won[0] == policy_won[1]), p.prompt_index))
            if oracle_win is not None and oracle_win[k] != 0.5:
                agree += [(float(won == (oracle_win[k] == 1.0)), p.prompt_index) for won in policy_won]

        s = client.stats
        cost = (
            s["prompt_tokens"] * cfg.price_prompt_per_1k + s["completion_tokens"] * cfg.price_completion_per_1k
        ) / 1000
        record = {**record, **s, "cost_usd_estimate": cost, "base_url": public_url(client.base_url)}
        if client.first_error:
            record["first_error"] = client.first_error
        # Neither high nor low is good here: 0.5 is an unbiased judge (when the runner lets aggregates say so).
        extra = {"judge_first_position_rate": {**_rate(first_pos, index), "higher_is_better": None}}
        if cfg.both_orders:
            extra["judge_position_consistency"] = by_prompt([c for c, _ in consistent], [i for _, i in consistent])
        if oracle_win is not None:
            extra["judge_oracle_agreement"] = by_prompt([a for a, _ in agree], [i for _, i in agree])
        return extra, record

    def _pairs(self, samples, ctx) -> tuple[list[_Pair], str]:
        """The judged samples (the first `samples_per_prompt` of each prompt) with their baselines."""
        cfg = self.config
        seen: dict[int, int] = defaultdict(int)
        chosen = []  # (sample number, slot)
        for i, s in enumerate(samples):
            slot = seen[s.prompt_index]
            seen[s.prompt_index] += 1
            if cfg.samples_per_prompt == 0 or slot < cfg.samples_per_prompt:
                chosen.append((i, slot))

        kind = cfg.baseline
        rows = None
        if kind == "auto":
            if cfg.baseline_run:
                kind = "run"
            else:
                rows = _eval_rows(ctx, samples)
                if rows is not None and all(rows[samples[i].prompt_index].get("reference") for i, _ in chosen):
                    kind = "reference"
                elif getattr(ctx, "reference", None) is not None and getattr(ctx, "tokenizer", None) is not None:
                    kind = "sft"
                else:
                    raise UserError(
                        'judge: no baseline to compare with: the evaluation prompts have no "reference" '
                        "and there is no starting policy; set judge.baseline_run=DIR of a complete run"
                    )

        if kind == "reference":
            rows = rows if rows is not None else _eval_rows(ctx, samples)
            if rows is None:
                raise UserError(
                    "judge.baseline=reference: this task's evaluation prompts are not available to the judge"
                )
            missing = sorted(
                {samples[i].prompt_index for i, _ in chosen if not rows[samples[i].prompt_index].get("reference")}
            )
            if missing:
                raise UserError(
                    f'judge.baseline=reference: evaluation prompt {missing[0]} has no "reference" completion '
                    f"({len(missing)} without); add them or use judge.baseline=run or sft"
                )
            base = [rows[samples[i].prompt_index]["reference"] for i, _ in chosen]
        elif kind == "run":
            base = _run_baseline(cfg.baseline_run, samples, chosen)
        else:
            base = _sft_baseline(ctx, samples, chosen)
        rows = rows if rows is not None else _eval_rows(ctx, samples)
        queries = [
            (rows[samples[i].prompt_index].get("query") if rows is not None else None) or samples[i].prompt
            for i, _ in chosen
        ]
        pairs = [
            _Pair(i, samples[i].prompt_index, slot, samples[i].prompt, samples[i].completion, b, q)
            for (i, slot), b, q in zip(chosen, base, queries)
        ]
        return pairs, (f"run:{Path(cfg.baseline_run).name}" if kind == "run" else kind)


def _eval_rows(ctx, samples) -> list[dict] | None:
    """The evaluation prompt rows the samples were drawn from, checked against the samples' prompts."""
    rows = getattr(ctx, "eval_prompts", None)
    task = getattr(ctx, "eval_task", None) or ctx.task
    if rows is None and hasattr(task, "eval_prompts"):
        rows = task.eval_prompts()
    if rows is None:
        return None
    for s in samples:
        if s.prompt_index >= len(rows) or rows[s.prompt_index]["prompt"] != s.prompt:
            raise UserError(
                f"judge: evaluation prompt {s.prompt_index} does not match the sampled prompt; "
                "the task's prompts differ from the ones evaluated (a data.eval_prompts file?)"
            )
    return rows


def _run_baseline(run_dir: str, samples, chosen) -> list[str]:
    """Head to head: the completion in the same (prompt, slot) of another complete run."""
    from bench.records import RecordError, read_samples

    path = Path(run_dir).expanduser()
    if not (path / "COMPLETE").exists() or not (path / "samples.jsonl").exists():
        raise UserError(f"judge.baseline_run={run_dir}: not a complete run directory (no COMPLETE or samples.jsonl)")
    try:
        rows = read_samples(path)
    except RecordError as exc:
        raise UserError(f"judge.baseline_run={run_dir}: unreadable record ({exc}); pass another complete run") from None
    groups: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["prompt_index"]].append(row)
    out = []
    for i, slot in chosen:
        s = samples[i]
        group = groups.get(s.prompt_index)
        if not group or group[0]["prompt"] != s.prompt:
            raise UserError(
                f"judge.baseline_run={run_dir}: its prompt {s.prompt_index} differs from this run's; "
                "compare runs on the same evaluation prompts"
            )
        out.append(group[slot % len(group)]["completion"])
    return out


def _sft_baseline(ctx, samples, chosen) -> list[str]:
    """Completions of the starting (SFT) policy, with the run's sampling settings and a seed of their own."""
    from bench.contracts import Generation
    from bench.policy import ModelPolicy

    if getattr(ctx, "reference", None) is None or getattr(ctx, "tokenizer", None) is None:
        raise UserError("judge.baseline=sft needs the starting policy; use judge.baseline=reference or run")
    order = sorted({samples[i].prompt_index for i, _ in chosen})
    where = {p: k for k, p in enumerate(order)}
    per_prompt = 1 + max(slot for _, slot in chosen)
    gen = replace(ctx.generation or Generation(), samples_per_prompt=per_prompt)
    prompt_text = {samples[i].prompt_index: samples[i].prompt for i, _ in chosen}
    drawn = ModelPolicy(ctx.reference, ctx.tokenizer).sample(
        [prompt_text[p] for p in order], gen, seed=ctx.seed + seeds.JUDGE_SFT_BASELINE
    )
    return [drawn[where[samples[i].prompt_index] * per_prompt + slot].completion for i, slot in chosen]
