"""The `bench` command: list plugins, run one (task, algorithm, config, seed), print the comparison.

Errors the user can cause end in one line on stderr and exit status 2; bugs keep their traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# On shared CPUs, busy-waiting OpenMP threads collapse torch's speed when another process holds a
# core; passive waiting costs little. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.errors import UserError  # noqa: E402


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "alignment-bench")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _describe(cls) -> str:
    return (getattr(cls, "description", None) or (cls.__doc__ or "").strip().split("\n")[0]).strip()


def cmd_list(args) -> None:
    from bench import registry
    from bench.config import field_docs, to_jsonable

    for kind, title in (("algorithm", "Algorithms"), ("task", "Tasks"), ("evaluator", "Evaluators")):
        print(f"{title}:")
        for name in registry.names(kind):
            cls = registry.load(kind, name)
            print(f"  {name:<16} {_describe(cls)}")
            if args.verbose and hasattr(cls, "Config"):
                docs = field_docs(cls.Config)
                for key, value in to_jsonable(cls.Config()).items():
                    print(f"      {key} = {value!r}  {docs.get(key, '')}")
        print()


def cmd_run(args) -> None:
    from bench.runner import RunSpec, execute

    execute(RunSpec(algo=args.algo, task=args.task, seed=args.seed, sets=args.set or []),
            results=Path(args.results), cache_dir=Path(args.cache))


def cmd_table(args) -> None:
    from bench.table import markdown

    print(markdown(Path(args.results), args.task))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="Benchmark LLM alignment algorithms head to head.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="show every registered algorithm, task and evaluator")
    p.add_argument("--verbose", "-v", action="store_true", help="also show each plugin's options and defaults")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="train, sample, evaluate and record one run")
    p.add_argument("--algo", required=True, help="algorithm name (see `bench list`)")
    p.add_argument("--task", required=True, help="task name (see `bench list`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. --set dpo.beta=0.5 --set train.lr=1e-5 --set task.scale=tiny")
    p.add_argument("--results", default="results", help="results directory (default: ./results)")
    p.add_argument("--cache", default=str(default_cache_dir()),
                   help="where built task artifacts are cached (default: $BENCH_CACHE_DIR or ~/.cache/alignment-bench)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("table", help="print the comparison of all complete runs of a task")
    p.add_argument("--task", required=True)
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
