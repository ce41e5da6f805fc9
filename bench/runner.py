"""One run, end to end: resolve the config, build the task, fit, sample, evaluate, record.

task.build() -> algorithm.fit(ctx) -> policy.sample(eval prompts) -> evaluators -> run record
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from bench import config as cfg
from bench import data as rows
from bench import distributed, fsdp, records, registry, seeds
from bench import io as bench_io
from bench.checks import comma_list
from bench.contracts import Context, Evaluation, Sample, optional
from bench.errors import UserError
from bench.lock import run_lock
from bench.logprobs import context_length
from bench.train import CHECKPOINT, STATE_FILE, check_launch

RECORD_VERSION = 1
"""Bumped when the meaning of a run record changes, so old and new runs never share an id."""
MAX_SEED = 2**31 - 1
"""Largest --seed: derived seeds (seed * 1_000_003 + k, twice over in PPO) stay within what a torch generator takes."""


@dataclass
class RunSpec:
    """What the user asked for on the command line."""

    algo: str
    task: str
    seed: int = 0
    sets: list[str] = field(default_factory=list)
    command: list[str] | None = None
    """The command line that asked for the run, recorded in config.json (the CLI passes its own, a sweep the
    equivalent `bench run`); None records the `bench run` command equivalent to this spec. Not part of the run id."""


def run_command(spec: RunSpec, results: Path | str) -> list[str]:
    """The `bench run` command line that reproduces this one run."""
    argv = ["bench", "run", "--algo", spec.algo, "--task", spec.task, "--seed", str(spec.seed)]
    for s in spec.sets:
        argv += ["--set", s]
    return argv + ["--results", str(results)]


@dataclass
class Resolved:
    """A run's plugins and settings after defaults and overrides; `record` is its JSON form."""

    algo_cls: type
    task_cls: type
    algo_config: Any
    task: Any
    train: Any
    generation: Any
    data: cfg.DataConfig
    options: cfg.RunOptions
    evaluators: list[tuple[type, Any]]
    seed: int
    record: dict
    cache_dir: Path
    eval_task: Any = None
    """The task whose prompts, generation defaults, judge prompt and gold reward evaluate the run (--eval-task), or
    None."""

    @property
    def run_id(self) -> str:
        return cfg.run_id(self.record)

    @property
    def name(self) -> str:
        return records.run_name(self.record["task"]["name"], self.record["algo"]["name"], self.run_id)


def resolve(spec: RunSpec, cache_dir: Path) -> Resolved:
    """Apply defaults and `--set` overrides; every unknown, ill-typed or out-of-range setting is an error here.

    Each section's Config checks its own ranges (bench.config.apply_overrides calls its check());
    what depends on the model, lengths within its context, is checked once it is loaded (check_context).
    """
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed <= MAX_SEED:
        raise UserError(f"--seed {spec.seed}: out of range; use an integer from 0 to {MAX_SEED}")
    algo_cls = registry.load("algorithm", spec.algo)
    task_cls = registry.load("task", spec.task)
    sets = cfg.split_sets(spec.sets)
    if "algo" in sets and spec.algo in sets:
        raise UserError(f"--set algo.* and --set {spec.algo}.* both given; use one of them")
    algo_sets = sets.pop("algo", None) or sets.pop(spec.algo, {})
    if optional(task_cls, "task", "eval_only"):
        raise UserError(
            f"task {spec.task} is evaluation-only: train on another task and evaluate here with "
            f"--eval-task {spec.task}, e.g. bench run --algo {spec.algo} --task "
            f"{optional(task_cls, 'task', 'train_task') or 'TASK'} --eval-task {spec.task}"
        )
    # The task's own defaults for runs on it (e.g. tldr: dpo.beta=0.5), below the user's --set.
    task_defaults = cfg.split_sets([f"{k}={v}" for k, v in optional(task_cls, "task", "run_defaults").items()])
    algo_sets = {**task_defaults.get(spec.algo, {}), **algo_sets}
    for section in ("train", "eval"):
        sets[section] = {**task_defaults.get(section, {}), **sets.get(section, {})}

    ev_names = registry.names("evaluator")
    options = cfg.apply_overrides(cfg.RunOptions(), sets.pop("run", {}), "run")
    if options.evaluators.strip():
        ev_names = comma_list(options.evaluators)
    evaluators = []
    for name in ev_names:
        ev_cls = registry.load("evaluator", name)
        ev_config = config_cls() if (config_cls := optional(ev_cls, "evaluator", "Config")) else None
        if name in sets:
            if ev_config is None:
                raise UserError(f"--set {name}.*: the evaluator {name!r} has no options")
            ev_config = cfg.apply_overrides(ev_config, sets.pop(name), name)
        if optional(_evaluator(ev_cls, ev_config), "evaluator", "enabled")():
            # A disabled one (a judge with no model) is left out: its options cannot change the run's id.
            evaluators.append((ev_cls, ev_config))

    algo_config = cfg.apply_overrides(algo_cls.Config(), algo_sets, spec.algo)
    algo_cls(config=algo_config)  # a plugin may still check in its constructor: fail before anything is built
    task_config = cfg.apply_overrides(task_cls.Config(), sets.pop("task", {}), "task")
    eval_task = None
    if options.eval_task:
        # Train on one task, evaluate on another (the paper's TL;DR -> CNN/DailyMail transfer).
        eval_cls = registry.load("task", options.eval_task)
        if eval_cls is task_cls:
            raise UserError(f"--eval-task {options.eval_task}: the run's own task; leave --eval-task out")
        eval_config = cfg.apply_overrides(eval_cls.Config(), sets.pop("eval_task", {}), "eval_task")
        eval_task = eval_cls(eval_config, Path(cache_dir))
    elif "eval_task" in sets:
        raise UserError("--set eval_task.*: set options of an evaluation task only together with --eval-task NAME")
    train = cfg.apply_overrides(cfg.train_config_for(algo_cls), sets.pop("train", {}), "train")
    generation = cfg.apply_overrides(
        cfg.generation_for(type(eval_task) if eval_task else task_cls), sets.pop("eval", {}), "eval"
    )
    data = cfg.apply_overrides(cfg.DataConfig(), sets.pop("data", {}), "data")
    if sets:
        valid = ["task", "algo", spec.algo, "train", "eval", "data", "run"] + [
            e.name for e, c in evaluators if c is not None
        ]
        raise UserError(f"--set {next(iter(sets))}.*: unknown section; sections are {', '.join(valid)}")

    task = task_cls(task_config, Path(cache_dir))
    data_record = cfg.to_jsonable(data)
    for key, path in dataclasses.asdict(data).items():
        if path:  # DataConfig.check saw that it is a file
            try:
                data_record[f"{key}_sha256"] = cfg.file_sha256(str(Path(path).expanduser()))
            except OSError as exc:
                raise UserError(
                    f"--set data.{key}={path}: cannot read it ({exc.strerror or exc}); pass a readable JSON Lines file"
                ) from None
    record = {
        "record_version": RECORD_VERSION,
        "seed": spec.seed,
        "task": {"name": task_cls.name, **cfg.to_jsonable(optional(task, "task", "config") or task_config)},
        "algo": {"name": algo_cls.name, **cfg.to_jsonable(algo_config)},
        "train": cfg.to_jsonable(train),
        "eval": cfg.to_jsonable(generation),
        "data": data_record,
        "run": cfg.to_jsonable(options),
        "evaluators": {ev.name: cfg.to_jsonable(c) if c is not None else {} for ev, c in evaluators},
    }
    if eval_task is not None:
        record["eval_task"] = {
            "name": type(eval_task).name,
            **cfg.to_jsonable(optional(eval_task, "task", "config") or eval_config),
        }
    return Resolved(
        algo_cls,
        task_cls,
        algo_config,
        task,
        train,
        generation,
        data,
        options,
        [(ev_cls, c) for ev_cls, c in evaluators],
        spec.seed,
        record,
        Path(cache_dir),
        eval_task,
    )


def check_context(model, tokenizer, train, generation, prompts: list[str]) -> None:
    """Lengths that must fit the policy's context window, known once it is loaded: train.max_length and the
    longest evaluation prompt plus eval.max_new_tokens. Past the window a model indexes beyond its position
    table (an IndexError, or a device assert on GPU), so this is one line naming the setting instead."""
    context = context_length(model)
    if context is None or context < 2:
        return  # no fixed window to fit
    if train.max_length > context:
        raise UserError(
            f"--set train.max_length={train.max_length}: longer than the policy's context of {context} "
            f"tokens; use at most {context}"
        )
    longest = max((len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]), default=0)
    if longest >= context:
        raise UserError(
            f"an evaluation prompt is {longest} tokens long and the policy's context {context} tokens; "
            "shorten the prompts (data.eval_prompts) so a completion fits after them"
        )
    if longest + generation.max_new_tokens > context:
        raise UserError(
            f"--set eval.max_new_tokens={generation.max_new_tokens}: the longest evaluation prompt "
            f"({longest} tokens) leaves {context - longest} of the policy's {context}-token context; "
            f"use at most {context - longest}"
        )


SCHEMAS = {
    "preferences": rows.PREFERENCE_KEYS,
    "test_preferences": rows.PREFERENCE_KEYS,
    "sft": rows.SFT_KEYS,
    "eval_prompts": rows.PROMPT_KEYS,
}
"""The data a run uses, by `data.*` key, with the fields every row must have."""


PAIRS = ("preferences", "test_preferences")
"""The data.* keys that hold preference pairs, whose chosen must differ from rejected."""


def read_user_files(r: Resolved) -> dict[str, list[dict]]:
    """The user's data files, read and validated once, before anything is built or written."""
    out = {}
    for key, keys in SCHEMAS.items():
        path = getattr(r.data, key)
        if not path:
            continue
        out[key] = rows.read_rows(path, keys)
        if not out[key] and key == "eval_prompts":
            raise UserError(f'{path}: the evaluation prompt set is empty; give at least one {{"prompt": ...}} line')
        if not out[key]:
            raise UserError(f"{path}: no rows (data.{key}); write one JSON object with {', '.join(keys)} per line")
        if key in PAIRS:
            # A file of nothing but identical pairs fails now, before anything is built; load_data drops them.
            rows.drop_identical_pairs(out[key], path)
    return out


def load_data(r: Resolved, user_rows: dict[str, list[dict]]) -> dict[str, Any]:
    """Training and evaluation rows: the user's (already validated) where given, else the task's, validated.

    Preference pairs whose chosen equals rejected are dropped, from the user's files and the task's data
    alike; the returned "skipped_pairs" counts them per key (`data_notes` says so, in the run's cost.json
    and as a line of output), and is no part of the run's config, so the run id does not change.
    """
    task = r.task
    from_task = {
        "preferences": lambda: task.preference_data("train"),
        "test_preferences": lambda: task.preference_data("test"),
        "sft": task.sft_data,
        "eval_prompts": (r.eval_task or task).eval_prompts,
    }
    sources = {key: getattr(r.data, key) if key in user_rows else f"task {r.task_cls.name}: {key}" for key in SCHEMAS}
    out: dict[str, Any] = {
        key: user_rows[key] if key in user_rows else rows.validate(from_task[key](), keys, sources[key])
        for key, keys in SCHEMAS.items()
    }
    skipped = {}
    for key in PAIRS:
        out[key], skipped[key] = rows.drop_identical_pairs(out[key], sources[key])
    out["skipped_pairs"] = skipped
    if r.generation.max_prompts:
        out["eval_prompts"] = out["eval_prompts"][: r.generation.max_prompts]
    if not out["eval_prompts"]:
        raise UserError(
            'the evaluation prompt set is empty; give a data.eval_prompts file with at least one {"prompt": ...} line'
        )
    return out


def data_notes(data: dict) -> tuple[list[str], dict]:
    """What load_data dropped: (lines to echo, none when nothing was; entries for cost.json)."""
    skipped = data.get("skipped_pairs") or {}
    lines = [
        f"data: skipped {n} {'held-out ' if key == 'test_preferences' else ''}preference pair{'s' * (n != 1)} "
        f"whose chosen equals rejected"
        for key, n in skipped.items()
        if n
    ]
    return lines, {
        "skipped_pairs": skipped.get("preferences", 0),
        "skipped_test_pairs": skipped.get("test_preferences", 0),
    }


def execute(
    spec: RunSpec, results: Path, cache_dir: Path, echo: Callable[[str], None] = print, wait: bool = True
) -> Path:
    """Run (or skip, or resume) one run and return its directory under `results`.

    One process writes a run at a time: a second one with the same run waits for the first
    (wait=False: raises bench.lock.RunInProgress instead) and then finds it complete.

    Launched as several processes (accelerate launch), all of them train, sample and evaluate, each its
    share (bench.distributed); the main process alone takes the lock, writes the record and prints, and
    the others wait for it at the end.
    """
    with _alike():
        check_launch()
        r = resolve(spec, cache_dir)
    if not distributed.is_main():
        echo = _quiet
    results = Path(results)
    final = results / r.name
    if distributed.broadcast(records.is_complete(final)):
        echo(f"{r.name}: complete, skipped ({final})")
        return final
    with _alike():
        check_results_dir(results)
        user_rows = read_user_files(r)
    for ev_cls, ev_config in r.evaluators:
        # Evaluators that talk to a service check it now, not after minutes of training (the main process only).
        distributed.run_on_main(optional(_evaluator(ev_cls, ev_config), "evaluator", "preflight"))

    t0 = time.time()
    r.task.build()
    if r.eval_task is not None:
        r.eval_task.build()
    with _alike():
        data = load_data(r, user_rows)
    t_build = time.time() - t0
    for line in data_notes(data)[0]:
        echo(line)

    with run_lock(results, r.name, wait=wait, echo=echo) if distributed.is_main() else nullcontext():
        if distributed.broadcast(records.is_complete(final)):  # another process finished it while we waited
            echo(f"{r.name}: complete, skipped ({final})")
            return final
        metrics = _record(r, data, results, t_build, echo, spec.command or run_command(spec, results))
        distributed.barrier()  # the record is published before any process of the run exits
    echo(summary_line(r.name, metrics))
    echo(f"run record: {final}")
    return final


@contextmanager
def _alike() -> Iterator[None]:
    """For steps every process of a run takes alike (settings, data files): a UserError there is the main process's
    to print, and the others exit with it quietly (bench.distributed.MainError)."""
    try:
        yield
    except UserError as exc:
        if distributed.launched_main() or isinstance(exc, distributed.MainError):
            raise
        raise distributed.MainError(str(exc)) from None


def _quiet(line: str) -> None:
    """The echo of processes other than the main one: it alone prints."""


def check_results_dir(results: Path) -> None:
    """A results directory that exists or can be created, or one line naming the path and the fix; creates nothing."""
    existing = results
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == results else f"lies below the file {existing}"
        raise UserError(f"--results {results}: {where}, not a directory; pass a directory (it is created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--results {results}: {existing} is not writable; pass a directory you can write to")


def _record(
    r: Resolved, data: dict, results: Path, t_build: float, echo: Callable[[str], None], command: list[str]
) -> dict:
    """Build the run under .partial/ (resuming from its checkpoint if one is there) and publish it; the caller holds
    the lock. `command` is the command line recorded in config.json. With several processes every one runs this
    and the main one alone writes."""
    import torch

    from bench.device import device

    main = distributed.is_main()
    partial = results / records.PARTIAL / r.name
    checkpoint_dir = partial / "checkpoints"
    step = None
    if main:
        step = _resume_step(checkpoint_dir, echo)
        if step is not None:
            echo(f"{r.name}: resuming from step {step}")
            for name in ("train_log.jsonl", "checkpoints.jsonl"):
                _truncate_log(partial / name, step)
        else:
            records.discard(partial)
    distributed.barrier()  # the others look for the checkpoint only once the main process has kept or removed it
    try:
        if main:
            partial.mkdir(parents=True, exist_ok=True)
            bench_io.atomic_write_json(
                partial / "config.json",
                {
                    "run_id": r.run_id,
                    "name": r.name,
                    "config": r.record,
                    "versions": records.package_versions(),
                    "git_revision": records.git_revision(),
                    "device": str(device()),
                    "processor": records.processor(),
                    **({"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {}),
                    "torch_threads": torch.get_num_threads(),
                    # The vector instructions of torch's CPU kernels (AVX512, AVX2, ...): others round differently.
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "command": shlex.join(command),
                    **({"processes": distributed.world_size()} if distributed.world_size() > 1 else {}),
                    # How several processes hold the policy: FSDP2 shards it, DDP (the default) replicates it.
                    **({"sharding": "fsdp2"} if fsdp.applies() else {}),
                },
            )
        cost = {"wall_time_s": {"build": t_build}}
        metrics = _fit_and_evaluate(r, data, partial, checkpoint_dir, cost)
        if main:
            bench_io.atomic_write_json(partial / "metrics.json", metrics)
            bench_io.atomic_write_json(partial / "cost.json", cost)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            records.publish(partial, results / r.name)
    except UserError:
        if main:
            records.discard(partial)
        raise
    except OSError as exc:
        # Disk full, a directory removed under us, ...: nothing half-written may stay visible.
        if main:
            records.discard(partial)
        where = exc.filename or partial
        raise UserError(f"cannot write {where} ({exc.strerror or exc}); free space or pass another --results") from None
    return metrics


def _resume_step(checkpoint_dir: Path, echo: Callable[[str], None]) -> int | None:
    """The step a partial run's checkpoint was taken at, or None (no checkpoint, or an unusable one).

    Both files must be there: a state file without the checkpoint it describes (e.g. left by an
    older layout) would truncate the logs to a step that training then does not resume from.
    """
    state = checkpoint_dir / STATE_FILE
    if not state.exists():
        return None
    if not (checkpoint_dir / CHECKPOINT).exists():
        echo(f"{state}: its checkpoint {CHECKPOINT} is missing; starting the run again")
        return None
    try:
        step = json.loads(state.read_text(encoding="utf-8"))["step"]
        if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            return step
    except (OSError, ValueError, KeyError, TypeError):
        pass
    echo(f"{state}: unreadable checkpoint state; starting the run again")
    return None


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log rows written after the checkpoint we restart from."""
    if path.exists():
        keep = [row for row in bench_io.read_jsonl(path) if row.get("step", 0) <= step]
        bench_io.write_jsonl(path, keep)


def _fit_and_evaluate(r: Resolved, data: dict, run_dir: Path, checkpoint_dir: Path, cost: dict) -> dict:
    import torch

    from bench.device import allocator_for, device
    from bench.policy import ModelPolicy
    from bench.profiling import Profiler

    dev = device()
    main = distributed.is_main()  # with several processes only the main one writes
    log_path = run_dir / "train_log.jsonl"
    points_path = run_dir / "checkpoints.jsonl"
    prompts = [row["prompt"] for row in data["eval_prompts"]]
    # Evaluation sampling gets its own seed stream, independent of training's.
    eval_seed = r.seed + seeds.EVALUATION

    torch.manual_seed(r.seed)
    policy, tokenizer = r.task.load_policy()
    allocator_for(policy)  # memory-lean allocation for a large model, glibc's faster own for a small one
    check_context(policy, tokenizer, r.train, r.generation, prompts)
    cost.update(data_notes(data)[1])
    reference, _ = r.task.load_policy()
    if r.train.lora_r:
        from bench.policy import add_lora

        policy = add_lora(policy, r.train)
    reference.requires_grad_(False)
    reference.eval()
    algorithm = r.algo_cls(config=r.algo_config)
    # Labels are a cost only for algorithms that learn from them (not SFT, not PPO on the gold reward); the
    # algorithm, configured, says (an online method scoring with the gold reward uses none).
    uses = optional(algorithm, "algorithm", "uses_preferences")
    cost["preference_labels"] = len(data["preferences"]) if uses else 0
    ctx = Context(
        task=r.task,
        policy=policy.to(dev),
        tokenizer=tokenizer,
        reference=reference.to(dev),
        train=r.train,
        seed=r.seed,
        log=(lambda row: bench_io.append_jsonl(log_path, row)) if main else (lambda row: None),
        checkpoint_dir=checkpoint_dir,
        cache_dir=r.cache_dir,
        sft_examples=data["sft"],
        preferences=data["preferences"],
        test_preferences=data["test_preferences"],
        eval_prompts=data["eval_prompts"],
        reward=optional(r.task, "task", "gold_reward"),
        generation=r.generation,
        implicit_reward=optional(algorithm, "algorithm", "implicit_reward"),
    )

    # Evaluators see the evaluation task: its gold reward, judge prompt and prompt rows.
    eval_ctx = (
        (lambda c: c)
        if r.eval_task is None
        else (
            lambda c: dataclasses.replace(c, eval_task=r.eval_task, reward=optional(r.eval_task, "task", "gold_reward"))
        )
    )
    marks: set[int] = set()
    profiler = Profiler(run_dir / "profile" if r.options.profile and main else None)
    checkpoint_time = [0.0]  # evaluating intermediate policies, not counted as fitting

    def on_step(step: int, total: int, model) -> None:
        """Evaluate evenly spaced intermediate policies: each adds a (KL, reward) point to the frontier."""
        profiler.step()
        k = r.options.eval_checkpoints
        if k <= 0 or step >= total:
            return
        if not marks:
            marks.update(round(total * i / (k + 1)) for i in range(1, k + 1))
        if step in marks:
            t = time.time()
            model.eval()
            point = eval_ctx(dataclasses.replace(ctx, trained=ModelPolicy(model, tokenizer)))
            samples = point.trained.sample(prompts, r.generation, seed=eval_seed)
            metrics = _evaluate(r.evaluators, samples, point, at_checkpoint=True)
            if main:
                bench_io.append_jsonl(points_path, {"step": step, "total_steps": total, "metrics": metrics})
            model.train()
            checkpoint_time[0] += time.time() - t

    ctx.on_step = on_step
    t0 = time.time()
    with profiler.fit():
        trained = algorithm.fit(ctx)
    cost["wall_time_s"]["fit"] = time.time() - t0 - checkpoint_time[0]
    cost["wall_time_s"]["checkpoints"] = checkpoint_time[0]
    ctx.trained = trained

    t0 = time.time()
    with profiler.phase("sample"):
        samples: list[Sample] = trained.sample(prompts, r.generation, seed=eval_seed)
    if not samples:
        raise UserError("the policy produced no samples; check eval.samples_per_prompt and the evaluation prompts")
    cost["wall_time_s"]["sample"] = time.time() - t0

    t0 = time.time()
    metrics: dict[str, Any] = {"n_prompts": len(prompts), "n_samples": len(samples)}
    with profiler.phase("evaluate"):
        metrics.update(_evaluate(r.evaluators, samples, eval_ctx(ctx), times=cost.setdefault("evaluator_time_s", {})))
    # Aggregates the algorithm measured while fitting, e.g. its reward model's held-out accuracy.
    metrics.update(optional(trained, "policy", "fit_metrics"))
    cost["wall_time_s"]["evaluate"] = time.time() - t0

    # Further frontier points the final policy's samples give (best-of-N's smaller N), written before the final row.
    t0 = time.time()
    more = optional(trained, "policy", "frontier_points")
    for step, total, point_policy in more() if more is not None else []:
        point_samples = point_policy.sample(prompts, r.generation, seed=eval_seed)
        point_ctx = eval_ctx(dataclasses.replace(ctx, trained=point_policy))
        point_metrics = _evaluate(r.evaluators, point_samples, point_ctx, at_checkpoint=True)
        if main:
            bench_io.append_jsonl(points_path, {"step": step, "total_steps": total, "metrics": point_metrics})
    cost["wall_time_s"]["checkpoints"] += time.time() - t0

    log_rows = bench_io.read_jsonl(log_path) if log_path.exists() else []
    cost["train_tokens"] = sum(row.get("tokens", 0) for row in log_rows)
    cost["sampled_tokens"] = sum(row.get("sampled_tokens", 0) for row in log_rows)
    cost["reward_calls"] = sum(row.get("reward_calls", 0) for row in log_rows)
    model = optional(trained, "policy", "model")
    if model is not None:
        n_params = sum(p.numel() for p in model.parameters())
        cost["parameters"] = n_params
        # The usual estimate: forward + backward ~ 6 FLOPs per parameter per trained token.
        cost["train_flops"] = 6 * n_params * cost["train_tokens"]
    if not main:
        return metrics
    final = {"step": max([row.get("step", 0) for row in log_rows] or [0]), "metrics": metrics, "final": True}
    bench_io.append_jsonl(points_path, {**final, "total_steps": final["step"]})

    bench_io.write_jsonl(
        run_dir / "samples.jsonl",
        (
            {
                "prompt_index": s.prompt_index,
                "prompt": s.prompt,
                "completion": s.completion,
                "completion_ids": s.completion_ids,
                **s.values,
            }
            for s in samples
        ),
    )
    save = optional(trained, "policy", "save")
    if r.options.save_model and save is not None:
        save(run_dir / "model")
    return metrics


def _evaluator(ev_cls: type, ev_config: Any):
    """An evaluator plugin's instance: with its Config where it has one."""
    return ev_cls(ev_config) if ev_config is not None else ev_cls()


def _evaluate(
    evaluators, samples: list[Sample], ctx: Context, at_checkpoint: bool = False, times: dict | None = None
) -> dict:
    """Run every applicable evaluator; per-sample values go onto the samples, aggregates are returned.

    `times`, when given, receives each evaluator's wall time in seconds under its name.
    """
    metrics: dict[str, Any] = {}
    for ev_cls, ev_config in evaluators:
        if at_checkpoint and not optional(ev_cls, "evaluator", "at_checkpoints"):
            continue  # e.g. a paid judge is run on the final policy only
        evaluator = _evaluator(ev_cls, ev_config)
        if not optional(evaluator, "evaluator", "applies")(ctx):
            continue
        t0 = time.time()
        result: Evaluation = evaluator.evaluate(samples, ctx)
        if times is not None:
            times[ev_cls.name] = time.time() - t0
        for key, values in result.per_sample.items():
            if len(values) != len(samples):
                raise RuntimeError(f"evaluator {ev_cls.name} returned {len(values)} values for {len(samples)} samples")
            for s, v in zip(samples, values):
                s.values[key] = v
        for key, agg in result.aggregates.items():
            metrics[key] = {
                "higher_is_better": optional(ev_cls, "evaluator", "higher_is_better"),
                "evaluator": ev_cls.name,
                **agg,
            }
    return metrics


def summary_line(name: str, metrics: dict) -> str:
    parts = []
    for key, agg in metrics.items():
        if isinstance(agg, dict) and "mean" in agg:
            parts.append(
                f"{key} {agg['mean']:.4g} ± {agg['se']:.2g}"
                if agg.get("se") == agg.get("se")
                else f"{key} {agg['mean']:.4g}"
            )
    return f"{name}: " + ", ".join(parts)
