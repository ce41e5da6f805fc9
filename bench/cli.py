"""The `bench` command: list plugins, run one (task, algorithm, config, seed), print the comparison.

Errors the user can cause end in one line on stderr and exit status 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

# On shared CPUs, busy-waiting OpenMP threads collapse torch's speed when another process holds a
# core; passive waiting costs little. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench import distributed  # noqa: E402
from bench.errors import UserError  # noqa: E402


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "alignment-bench")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _describe(cls, kind: str) -> str:
    from bench.contracts import optional

    return (optional(cls, kind, "description") or (cls.__doc__ or "").strip().split("\n")[0]).strip()


LIST_TITLES = {
    "algorithm": "Algorithms (--set algo.KEY=VALUE or --set NAME.KEY=VALUE)",
    "task": "Tasks (--set task.KEY=VALUE; with --eval-task NAME, --set eval_task.KEY=VALUE)",
    "evaluator": "Evaluators (--set NAME.KEY=VALUE)",
}


def _print_options(config: object, indent: str = "      ") -> None:
    """Every field of a Config instance: `key = default  docstring`."""
    from bench.config import field_docs, to_jsonable

    docs = field_docs(type(config))
    for key, value in to_jsonable(config).items():
        print(f"{indent}{key} = {value!r}  {' '.join(docs.get(key, '').split())}")


def _changed(defaults: object, base: object) -> str:
    """`key=value` pairs of a dataclass where it differs from `base` (a plugin's own train or eval defaults)."""
    return ", ".join(
        f"{f.name}={getattr(defaults, f.name)!r}"
        for f in dataclasses.fields(defaults)
        if getattr(defaults, f.name) != getattr(base, f.name)
    )


def cmd_list(args) -> None:
    from bench import registry
    from bench.config import HARNESS_SECTIONS, generation_for, train_config_for
    from bench.contracts import Generation, optional
    from bench.train import TrainConfig

    # One name column wide enough for the longest registered name (heldout-sentiment), so descriptions line up.
    width = max([16, *(len(name) for kind in LIST_TITLES for name in registry.names(kind))])
    for kind, title in LIST_TITLES.items():
        print(f"{(title if args.verbose else title.split(' (')[0])}:")
        for name in registry.names(kind):
            cls = registry.load(kind, name)
            print(f"  {name:<{width}} {_describe(cls, kind)}")
            if not args.verbose:
                continue
            config_cls = cls.Config if kind != "evaluator" else optional(cls, kind, "Config")
            if config_cls is not None:
                _print_options(config_cls())
            # Where a plugin moves the harness's defaults, say so beside its own options.
            if kind == "algorithm" and (train := _changed(train_config_for(cls), TrainConfig())):
                print(f"      (train.* defaults: {train})")
            if kind == "task":
                if eval_defaults := _changed(generation_for(cls), Generation()):
                    print(f"      (eval.* defaults: {eval_defaults})")
                if run_defaults := optional(cls, "task", "run_defaults"):
                    print(f"      (defaults of runs on it: {', '.join(f'{k}={v!r}' for k, v in run_defaults.items())})")
        print()
    if args.verbose:
        print("Every run (an algorithm's or task's defaults above take the place of these):")
        for section, config_cls in HARNESS_SECTIONS.items():
            print(f"  {section + '.*':<16} {(config_cls.__doc__ or '').strip().splitlines()[0]}")
            _print_options(config_cls())


def _sets(args) -> list[str]:
    """--set items, with --eval-task as the run.eval_task setting it stands for."""
    return (args.set or []) + ([f"run.eval_task={args.eval_task}"] if getattr(args, "eval_task", None) else [])


def cmd_run(args) -> None:
    from bench.device import threads_from_environment
    from bench.runner import RunSpec, execute

    threads_from_environment()
    execute(
        RunSpec(algo=args.algo, task=args.task, seed=args.seed, sets=_sets(args), command=args.command_line),
        results=Path(args.results),
        cache_dir=Path(args.cache),
    )


def cmd_table(args) -> None:
    from bench.table import markdown

    print(markdown(Path(args.results), args.task))


def cmd_sweep(args) -> int:
    from bench import distributed, sweep

    if distributed.launched_processes() > 1:
        raise UserError(
            "bench sweep dispatches runs and is not itself launched as several processes: launch each run's "
            "`bench run` command (bench sweep --dry-run lists them) with accelerate launch, or give each "
            "submitit job several processes (--executor tasks_per_node=N)"
        )
    results, cache = Path(args.results), Path(args.cache)
    if args.jobs is not None and args.dispatch == "submitit":
        raise UserError(
            "--jobs applies to --dispatch local; submitit runs its jobs in parallel itself "
            "(limit them with --executor slurm_array_parallelism=N)"
        )
    jobs = sweep.parse_jobs(args.jobs) if args.jobs is not None else 1
    grid = sweep.parse_grid(args.grid or [])
    algos = sweep.split_algos(args.algo)
    seeds = sweep.parse_seeds(args.seeds) if args.seeds is not None else None
    if args.executor and args.dispatch != "submitit":
        raise UserError("--executor options apply to --dispatch submitit only")
    if args.preset:
        specs = sweep.preset_specs(args.preset, args.task, algos, seeds, grid, _sets(args))
    elif algos is None:
        raise UserError("bench sweep: give --algo A[,B...] or --preset NAME")
    else:
        specs = sweep.expand(args.task, algos, grid, seeds or [0], _sets(args))
    planned = sweep.plan(specs, results, cache)
    if args.dry_run:
        print("\n".join(sweep.describe(planned, results)))
        return 0
    try:
        sweep.run(
            planned,
            results,
            cache,
            dispatch=args.dispatch,
            executor_options=sweep.parse_executor_options(args.executor or []),
            jobs=jobs,
        )
    except sweep.RunsFailed as failed:
        for line in failed.lines:
            print(line, file=sys.stderr)
        print(
            f"error: {len(failed.lines)} of {failed.total} runs failed (above); fix what their lines say and run "
            "the same sweep again (complete runs are skipped)",
            file=sys.stderr,
        )
        return failed.status
    return 0


def cmd_report(args) -> None:
    from bench.report import write_report

    out = Path(args.out) if args.out else Path("reports") / args.task
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {out}: is a file, not a directory; pass a directory for the report (created if missing)"
        )
    write_report(Path(args.results), args.task, out, kl_budget=args.kl_budget)
    print(f"report: {out / 'report.md'} and {out / 'index.html'} (tables as CSV and LaTeX beside them)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="Benchmark LLM alignment algorithms head to head.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="show every registered algorithm, task and evaluator")
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="also show every option with its default and meaning: the plugins' and train.*, eval.*, data.*, run.*",
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="train, sample, evaluate and record one run")
    p.add_argument("--algo", required=True, help="algorithm name (see `bench list`)")
    p.add_argument("--task", required=True, help="task name (see `bench list`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a setting, e.g. --set dpo.beta=0.5 --set train.lr=1e-5 --set task.scale=tiny",
    )
    p.add_argument(
        "--eval-task",
        metavar="TASK",
        help="evaluate on another task's prompts, e.g. --task tldr --eval-task cnn-dm (out-of-distribution)",
    )
    p.add_argument("--results", default="results", help="results directory (default: ./results)")
    p.add_argument(
        "--cache",
        default=str(default_cache_dir()),
        help="where built task artifacts are cached (default: $BENCH_CACHE_DIR or ~/.cache/alignment-bench)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("table", help="print the comparison of all complete runs of a task")
    p.add_argument("--task", required=True)
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser(
        "sweep", help="run a grid of settings x seeds; complete runs are skipped, interrupted ones resumed"
    )
    p.add_argument("--task", required=True, help="task name (see `bench list`)")
    p.add_argument("--algo", help="comma-separated algorithm names, e.g. dpo,unlikelihood (with --preset: only these)")
    p.add_argument(
        "--grid",
        action="append",
        metavar="SECTION.KEY=V1,V2,...",
        help="values to sweep, e.g. --grid algo.beta=0.05,0.1 --grid train.lr=1e-5,1e-4; an algo.* key "
        "is swept for the algorithms that have it",
    )
    p.add_argument("--seeds", help="comma-separated seeds (default: 0, or the preset's)")
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="a fixed setting for every run, as in `bench run`"
    )
    p.add_argument(
        "--preset",
        help="a named grid: `paper` is the DPO paper's sentiment sweep, `modern` the 2024 methods beside the paper's",
    )
    p.add_argument(
        "--eval-task", metavar="TASK", help="evaluate every run on another task's prompts (as in `bench run`)"
    )
    p.add_argument("--results", default="results", help="results directory (default: ./results)")
    p.add_argument(
        "--cache",
        default=str(default_cache_dir()),
        help="where built task artifacts are cached (default: $BENCH_CACHE_DIR or ~/.cache/alignment-bench)",
    )
    p.add_argument(
        "--dispatch",
        choices=("local", "submitit"),
        default="local",
        help="local: one run after another here (default), or --jobs at once; submitit: one job per run on "
        "Slurm, or local subprocesses where there is no Slurm (pip install alignment-bench[cluster])",
    )
    p.add_argument(
        "--jobs",
        metavar="N",
        help="local dispatch: run up to N runs at once, each in a process of its own with 1/N of the torch "
        "threads (default 1: one after another in this process)",
    )
    p.add_argument(
        "--executor",
        action="append",
        metavar="KEY=VALUE",
        help="a submitit executor parameter, e.g. --executor slurm_partition=gpu --executor gpus_per_node=1 "
        "--executor timeout_min=600 --executor slurm_array_parallelism=8; cluster=local forces local jobs",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is complete; run nothing")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "report", help="build the report of a task (tables, frontier, paired tests) from its complete runs"
    )
    p.add_argument("--task", required=True)
    p.add_argument("--results", default="results")
    p.add_argument("--out", help="output directory (default: reports/TASK)")
    p.add_argument(
        "--kl-budget",
        type=float,
        metavar="NATS",
        help="KL up to which frontier areas and best settings are compared (default: the smallest "
        "largest KL reached by any algorithm)",
    )
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        args.command_line = ["bench", *argv]  # what the run record keeps as the command that made it
        status = args.func(args)
        distributed.close()
    except UserError as exc:
        if distributed.launched_main():
            print(f"error: {exc}", file=sys.stderr)
        elif not isinstance(exc, distributed.MainError):  # the main process prints its own errors
            print(f"error (process {os.environ.get('RANK')}): {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bench list | head`: the reader has gone; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.filename is None:  # not a path the user gave or can fix: keep the traceback
            raise
        print(
            f"error: {exc.filename}: {exc.strerror or exc}; check the path (--results, --out, --cache, data.*) "
            "and the free space",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
