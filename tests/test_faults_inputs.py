"""Bad `--set` values, seeds and data files: one line naming the key or file, exit 2, nothing new in results/.

Each case of the catalogue runs `bench run` in this process beside a complete record and checks what
the README promises (tests/faults.py): exit status 2, one `error: ...` line that names the key, value or
file, no traceback, nothing new under results/ (no run, no .partial/ entry), the old record still listed.
Most cases fail while the config is resolved or the user's files are read, before anything is built;
the context-length cases fail right after the policy is loaded, once its context window is known.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from conftest import TINY
from faults import assert_still_listed, assert_user_error, bench_main, seed_results

ROWS = {
    "preferences": [
        {"prompt": "This movie", "chosen": " was a delight", "rejected": " was a bore"},
        {"prompt": "Le café", "chosen": " était parfait", "rejected": " était froid"},
    ],
    "sft": [
        {"prompt": "This movie", "completion": " was a delight"},
        {"prompt": "Le café", "completion": " était bon"},
    ],
    "eval_prompts": [{"prompt": "This movie"}, {"prompt": "Le café"}],
}
ROWS["test_preferences"] = ROWS["preferences"]
KINDS = tuple(ROWS)
"""The data.* keys, each a kind of file."""


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _file(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.write_bytes(data)
    return path


# Each builder writes what it needs under a directory and returns (arguments after `run`, fragment of the error).
Case = Callable[[Path], tuple[list[str], str]]


def _sets(*items: str, algo: str = "dpo") -> list[str]:
    return ["--algo", algo, "--task", "sentiment", *[a for item in items for a in ("--set", item)]]


def _setting(item: str, accepted: str, algo: str = "dpo", shown: str = "") -> Case:
    """`--set item` fails with `--set SHOWN: accepted` (SHOWN: the item itself unless the message names another)."""
    return lambda root: (_sets(item, algo=algo), f"--set {shown or item}: {accepted}")


def _data_file(kind: str, encoding: str) -> Case:
    """A data.KIND file in a form that is not UTF-8 JSON Lines."""

    def build(root: Path):
        text, path = _jsonl(ROWS[kind]), root / f"{kind}.jsonl"
        if encoding == "utf-16":  # with a byte-order mark (FF FE)
            path.write_bytes(text.encode("utf-16"))
            fragment = f"{path}: UTF-16 text; save it as UTF-8"
        elif encoding == "utf-16-be":  # no byte-order mark: a NUL byte in every other position
            path.write_bytes(text.encode("utf-16-be"))
            fragment = f"{path}: UTF-16 text; save it as UTF-8"
        elif encoding == "latin-1":  # "café" on line 2 is the one byte 0xe9
            path.write_bytes(text.encode("latin-1"))
            fragment = f"{path} line 2: not UTF-8 text (byte 0xe9); save it as UTF-8"
        elif encoding == "binary":  # a PNG header: its first NUL byte on line 3
            path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
            fragment = f"{path} line 3: binary data (a NUL byte)"
        else:  # bytes of no encoding at all, and no NUL among them
            path.write_bytes(bytes(range(128, 256)) * 8)
            fragment = f"{path} line 1: binary data"
        return _sets(f"data.{kind}={path}"), fragment

    return build


def _identical(kind: str) -> Case:
    def build(root: Path):
        same = [
            {"prompt": "This movie", "chosen": " was fine", "rejected": " was fine "},
            {"prompt": "The plot", "chosen": " is thin", "rejected": "is thin"},
        ]
        path = _file(root, f"{kind}.jsonl", _jsonl(same).encode())
        return _sets(f"data.{kind}={path}"), f"{path}: all 2 preference pairs have chosen equal to rejected"

    return build


def _directory(root: Path):
    (root / "pairs").mkdir()
    return _sets(f"data.preferences={root / 'pairs'}"), f"--set data.preferences={root / 'pairs'}: a directory"


def _empty(kind: str, content: bytes, fragment: str) -> Case:
    def build(root: Path):
        path = _file(root, f"{kind}.jsonl", content)
        return _sets(f"data.{kind}={path}"), f"{path}: {fragment}"

    return build


def _seed(value: str, fragment: str) -> Case:
    return lambda root: (["--seed", value, *_sets()], fragment)


ROOM_FOR_120 = "the longest evaluation prompt (8 tokens) leaves 120 of the policy's 128-token context; use at most 120"
"""The tiny task's policy has a 128-token context and evaluation prompts of up to 8 tokens."""

ROLLOUT_ROOM = (
    "the longest training prompt (8 tokens) leaves 120 of the policy's 128-token context for {}'s samples; "
    "use at most 120"
)
"""Its training prompts (those of the preference pairs) are up to 8 tokens long too."""

CATALOGUE: dict[str, Case] = {
    # train.*: non-finite and out of range (the first ones as the user met them)
    "train-epochs-inf": _setting("train.epochs=inf", "expected a finite number"),
    "train-epochs-nan": _setting("train.epochs=nan", "expected a finite number"),
    "train-epochs-1e999": _setting("train.epochs=1e999", "expected a finite number"),
    "train-epochs-0": _setting("train.epochs=0", "must be > 0 (or set train.max_steps)"),
    "train-lr-inf": _setting("train.lr=inf", "expected a finite number"),
    "train-lr-0": _setting("train.lr=0", "must be > 0"),
    "train-max_grad_norm-neg": _setting("train.max_grad_norm=-1", "must be >= 0"),
    "train-warmup-neg": _setting("train.warmup_steps=-5", "must be >= 0"),
    "train-max_length-1": _setting("train.max_length=1", "must be at least 2"),
    "train-batch_size-0": _setting("train.batch_size=0", "must be at least 1"),
    "train-grad_accum-3": _setting(
        "train.grad_accum=3", "must be a multiple of train.grad_accum (3)", shown="train.batch_size=32"
    ),
    "train-weight_decay-neg": _setting("train.weight_decay=-0.1", "must be >= 0"),
    "train-max_steps-neg": _setting("train.max_steps=-1", "must be >= 0"),
    "train-max_steps-huge": _setting("train.max_steps=99999999999999999999", "out of range"),
    "train-max_steps-float": _setting("train.max_steps=1.5", "expected an integer"),
    "train-log_every-0": _setting("train.log_every=0", "must be at least 1"),
    "train-checkpoint_every-neg": _setting("train.checkpoint_every=-1", "must be >= 0"),
    "train-lora_r-neg": _setting("train.lora_r=-1", "must be >= 0"),
    "train-lora_dropout-1": _setting("train.lora_dropout=1", "must lie in [0, 1)"),
    "train-optimizer-sgd": _setting("train.optimizer=sgd", "use adamw or rmsprop"),
    "train-unknown-key": _setting("train.steps=3", "unknown key", shown="train.steps"),
    # eval.*
    "eval-temperature-neg": _setting("eval.temperature=-1", "must be >= 0 (0 is greedy)"),
    "eval-temperature-inf": _setting("eval.temperature=inf", "expected a finite number"),
    "eval-top_p-0": _setting("eval.top_p=0", "must lie in (0, 1]"),
    "eval-top_p-nan": _setting("eval.top_p=nan", "expected a finite number"),
    "eval-samples-0": _setting("eval.samples_per_prompt=0", "must be at least 1"),
    "eval-max_prompts-neg": _setting("eval.max_prompts=-1", "must be >= 0"),
    "eval-batch_size-0": _setting("eval.batch_size=0", "must be at least 1"),
    "eval-max_new_tokens-0": _setting("eval.max_new_tokens=0", "must be at least 1"),
    # lengths past the policy's context (128 tokens on the tiny task): found once the model is loaded
    "eval-max_new_tokens-huge": _setting("eval.max_new_tokens=100000000", ROOM_FOR_120),
    "eval-max_new_tokens-121": _setting("eval.max_new_tokens=121", ROOM_FOR_120),
    "train-max_length-context": _setting("train.max_length=4096", "longer than the policy's context of 128"),
    # run.*
    "run-eval_checkpoints-neg": _setting("run.eval_checkpoints=-1", "must lie in [0, 10000]"),
    "run-eval_checkpoints-huge": _setting("run.eval_checkpoints=100000000", "must lie"),
    "run-save_model-maybe": _setting("run.save_model=maybe", "expected true or false"),
    "unknown-section": _setting("nosuch.key=1", "unknown section", shown="nosuch.*"),
    # task.*
    "task-max_prompts-moved": _setting(
        "task.max_prompts=-1", "task.max_prompts is now eval.max_prompts; use --set eval.max_prompts=-1"
    ),
    "task-lm_lr-inf": _setting("task.lm_lr=inf", "expected a finite number"),
    "task-samples_per_prefix-1": _setting("task.samples_per_prefix=1", "must be at least 2"),
    # the algorithms' main options
    "dpo-beta-inf": _setting("dpo.beta=inf", "expected a finite number"),
    "dpo-beta-neg": _setting("dpo.beta=-1", "must be > 0"),
    "dpo-beta-0": _setting("algo.beta=0", "must be > 0", shown="dpo.beta=0"),
    "dpo-beta-word": _setting("dpo.beta=high", "expected a float"),
    "dpo-label_smoothing": _setting("dpo.label_smoothing=0.5", "must lie in [0, 0.5)"),
    "dpo-smoothing-ipo": lambda root: (
        _sets("dpo.loss_type=ipo", "dpo.label_smoothing=0.1"),
        "--set dpo.label_smoothing=0.1: applies to dpo.loss_type=sigmoid only",
    ),
    "dpo-loss_type": _setting("dpo.loss_type=kto", "use one of sigmoid, ipo, hinge"),
    "unlikelihood-alpha-neg": _setting("unlikelihood.alpha=-1", "must be >= 0", algo="unlikelihood"),
    "ppo-target_kl-0": _setting("ppo.target_kl=0", "must be > 0", algo="ppo"),
    "ppo-gamma-0": _setting("ppo.gamma=0", "must lie in (0, 1]", algo="ppo"),
    "ppo-gt-lam": _setting("ppo-gt.lam=1.5", "must lie in [0, 1]", algo="ppo-gt"),
    "ppo-temperature-0": _setting("ppo.temperature=0", "must be > 0", algo="ppo"),
    # rollout lengths past the policy's 128-token context, caught before any reward model is trained
    "ppo-gt-max_new_tokens-context": _setting(
        "ppo-gt.max_new_tokens=1000",
        ROLLOUT_ROOM.format("ppo-gt"),
        algo="ppo-gt",
    ),
    "grpo-max_new_tokens-context": _setting("grpo.max_new_tokens=128", ROLLOUT_ROOM.format("grpo"), algo="grpo"),
    "best-of-n-n-0": _setting("best-of-n.n=0", "must be at least 1", algo="best-of-n"),
    "best-of-n-n-inf": _setting("best-of-n.n=inf", "expected an integer", algo="best-of-n"),
    # --seed
    "seed-huge": _seed(
        "99999999999999999999999", "--seed 99999999999999999999999: out of range; use an integer from 0 to 2147483647"
    ),
    "seed-2**31": _seed("2147483648", "--seed 2147483648: out of range"),
    "seed-negative": _seed("-1", "--seed -1: out of range"),
    "seed-word": _seed("abc", "argument --seed: invalid int value: 'abc'"),
    # data files: every kind in binary, UTF-16 and Latin-1
    **{
        f"{kind}-{encoding}": _data_file(kind, encoding)
        for kind in KINDS
        for encoding in ("binary", "utf-16", "latin-1")
    },
    "preferences-utf-16-no-bom": _data_file("preferences", "utf-16-be"),
    "sft-binary-no-nul": _data_file("sft", "noise"),
    "preferences-all-identical": _identical("preferences"),
    "test_preferences-all-identical": _identical("test_preferences"),
    "data-directory": _directory,
    "preferences-empty": _empty("preferences", b"", "no rows (data.preferences)"),
    "sft-blank-lines": _empty("sft", b"\n  \n\n", "no rows (data.sft)"),
    "eval_prompts-empty": _empty("eval_prompts", b"", "the evaluation prompt set is empty"),
    "test_preferences-bom-only": _empty("test_preferences", b"\xef\xbb\xbf", "no rows (data.test_preferences)"),
    "data-no-such-file": lambda root: (
        _sets(f"data.sft={root / 'missing.jsonl'}"),
        f"--set data.sft={root / 'missing.jsonl'}: no such file",
    ),
}


def test_the_catalogue_covers_at_least_35_inputs():
    assert len(CATALOGUE) >= 35


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_is_one_line_and_leaves_the_results_as_they_were(case, cache_dir, good_record, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, fragment = CATALOGUE[case](inputs)
    results = tmp_path / "results"
    before = seed_results(results, [good_record])
    code, _, err = bench_main(["run", *args, *TINY, "--results", results], cache_dir)
    assert_user_error(code, err, fragment, results, before)
    assert_still_listed(results, cache_dir, [good_record])


def _run_with(tmp_path: Path, cache_dir: Path, *extra: str) -> tuple[int, str, str, Path]:
    results = tmp_path / "results"
    code, out, err = bench_main(
        [
            "run",
            *_sets(
                "train.max_steps=2",
                "train.batch_size=4",
                "eval.max_prompts=4",
                "eval.samples_per_prompt=1",
                "eval.max_new_tokens=8",
                "run.save_model=false",
                *extra,
            ),
            *TINY,
            "--results",
            results,
        ],
        cache_dir,
    )
    return code, out, err, results


def test_a_utf8_bom_and_some_identical_pairs_run_and_the_skipped_pairs_are_recorded(cache_dir, tmp_path):
    pairs = ROWS["preferences"] + [{"prompt": "The plot", "chosen": " is thin", "rejected": " is thin "}] * 3
    path = _file(tmp_path, "pairs.jsonl", b"\xef\xbb\xbf" + _jsonl(pairs).encode())
    prompts = _file(tmp_path, "prompts.jsonl", b"\xef\xbb\xbf" + _jsonl(ROWS["eval_prompts"]).encode())
    code, out, err, results = _run_with(tmp_path, cache_dir, f"data.preferences={path}", f"data.eval_prompts={prompts}")
    assert code == 0, err
    (run,) = [p for p in results.iterdir() if not p.name.startswith(".")]
    cost = json.loads((run / "cost.json").read_text())
    assert cost["skipped_pairs"] == 3 and cost["skipped_test_pairs"] == 0
    assert "data: skipped 3 preference pairs whose chosen equals rejected" in out
    assert cost["preference_labels"] == 2  # labels are counted over the pairs trained on
    config = json.loads((run / "config.json").read_text())["config"]
    assert "skipped_pairs" not in json.dumps(config)  # a count of the data, not a setting: the run id stays
    assert json.loads((run / "metrics.json").read_text())["n_prompts"] == 2


def test_identical_pairs_of_the_task_are_dropped_and_counted(cache_dir, monkeypatch):
    from bench import runner
    from bench.errors import UserError

    r = runner.resolve(runner.RunSpec("dpo", "sentiment", 0, ["task.scale=tiny"]), cache_dir)
    real = r.task.preference_data("train")
    same = {"prompt": "The plot", "chosen": " is thin", "rejected": "is thin"}
    monkeypatch.setattr(r.task, "preference_data", lambda split: real + [same] * 2 if split == "train" else [same])
    with pytest.raises(UserError, match="task sentiment: test_preferences: all 1 preference pairs have chosen equal"):
        runner.load_data(r, {})
    monkeypatch.setattr(r.task, "preference_data", lambda split: real + [same] * 2 if split == "train" else real[:3])
    data = runner.load_data(r, {})
    assert data["preferences"] == real and data["test_preferences"] == real[:3]
    assert data["skipped_pairs"] == {"preferences": 2, "test_preferences": 0}
    lines, cost = runner.data_notes(data)
    assert lines == ["data: skipped 2 preference pairs whose chosen equals rejected"]
    assert cost == {"skipped_pairs": 2, "skipped_test_pairs": 0}


def test_data_files_decode_as_utf8_with_or_without_a_bom(tmp_path):
    from bench.data import PROMPT_KEYS, read_rows

    rows = [{"prompt": "Le café\u2028était"}, {"prompt": "plain"}]
    text = _jsonl(rows)
    for name, data in (
        ("bom", b"\xef\xbb\xbf" + text.encode()),
        ("crlf", text.replace("\n", "\r\n").encode()),
        ("plain", text.encode()),
    ):
        assert read_rows(str(_file(tmp_path, name, data)), PROMPT_KEYS) == rows, name


def test_the_largest_seed_fits_every_generator_it_is_derived_into():
    """PPO seeds its rollouts with seed * 1_000_003 + update, which sample() multiplies by 1_000_003 again."""
    from tiny import tiny_gpt2

    from bench.runner import MAX_SEED
    from bench.sampling import sample
    from bench.train import example_order

    derived = MAX_SEED * 1_000_003 + 5
    assert sorted(example_order(7, derived, 0, 7)) == list(range(7))
    (completion,) = sample(tiny_gpt2(), [[1, 2]], max_new_tokens=3, eos_token_id=None, pad_token_id=0, seed=derived)
    assert len(completion) == 3
