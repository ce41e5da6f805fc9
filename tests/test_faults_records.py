"""Fault injection: corrupted run records under results/.

Each case copies the shared good record twice, corrupts the second copy, and checks that
`bench table` and `bench report` still show the good one, name the bad file in one warning
line and exit 0; with nothing readable left they say so as before. The schema itself
(records.load_record) is tested directly at the end.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from faults import assert_user_error, bench_main, seed_results

from bench import io as bench_io
from bench import records

BAD = "sentiment-sft-000000000bad"


# ---------------------------------------------------------------- corruptions


def _write(name: str, data: str | bytes):
    def corrupt(run: Path) -> None:
        path = run / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))

    return corrupt


def _truncate(name: str, in_string: bool | None = None):
    """Cut the file at its middle; in_string: at the nearest cut inside a string (True) or outside any (False)."""

    def corrupt(run: Path) -> None:
        text = (run / name).read_text()
        cut = len(text) // 2
        if in_string is not None:
            inside = [text[:i].count('"') % 2 == 1 for i in range(len(text))]
            cut = next(i for i in range(cut, len(text)) if inside[i] == in_string and text[i - 1] != "\\")
        (run / name).write_text(text[:cut])

    return corrupt


def _cut_mid_line(name: str):
    """Keep the first half of the rows and half of the next one, as a write cut short would."""

    def corrupt(run: Path) -> None:
        lines = (run / name).read_text().splitlines(keepends=True)
        keep = len(lines) // 2
        (run / name).write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])

    return corrupt


def _edit_json(name: str, change):
    def corrupt(run: Path) -> None:
        obj = json.loads((run / name).read_text())
        change(obj)
        (run / name).write_text(json.dumps(obj))

    return corrupt


def _edit_row(name: str, change, index: int = 0):
    """Replace row `index` of a JSON-lines file by change(row) (a dict, or any JSON value)."""

    def corrupt(run: Path) -> None:
        rows = [json.loads(line) for line in (run / name).read_text().splitlines() if line.strip()]
        rows[index] = change(rows[index])
        (run / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    return corrupt


def _append(name: str, line: str | bytes):
    def corrupt(run: Path) -> None:
        with open(run / name, "ab") as f:
            f.write(line if isinstance(line, bytes) else line.encode("utf-8"))

    return corrupt


def _remove(name: str):
    return lambda run: (run / name).unlink()


def _as_directory(name: str):
    def corrupt(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()

    return corrupt


def _without(*keys):
    """Delete a nested key, e.g. _without("config", "task", "name")."""

    def change(obj):
        for key in keys[:-1]:
            obj = obj[key]
        del obj[keys[-1]]

    return change


def _setting(value, *keys):
    def change(obj):
        for key in keys[:-1]:
            obj = obj[key]
        obj[keys[-1]] = value

    return change


def _dropping(key):
    return lambda row: {k: v for k, v in row.items() if k != key}


# (id, file the warning names, corruption, what the warning says is wrong)
CASES = [
    ("metrics-truncated", "metrics.json", _truncate("metrics.json", False), "at the end of the file: cut short?)"),
    ("metrics-truncated-mid-string", "metrics.json", _truncate("metrics.json", True), "file: cut short?)"),
    ("metrics-empty", "metrics.json", _write("metrics.json", ""), "empty file"),
    ("metrics-whitespace", "metrics.json", _write("metrics.json", "\n  \n"), "empty file"),
    ("metrics-list", "metrics.json", _write("metrics.json", "[1, 2, 3]\n"), "should be an object, got a list"),
    ("metrics-garbage", "metrics.json", _write("metrics.json", "gold_reward = 0.5\n"), "not valid JSON (line 1"),
    ("metrics-binary", "metrics.json", _write("metrics.json", b"\x00\x01\x02PK\x03\x04\x00\x00"), "not valid JSON"),
    (
        "metrics-non-utf8",
        "metrics.json",
        _write("metrics.json", b'{"gold_reward": {"mean": "\xff\xfe"}}'),
        "not UTF-8 text (byte 0xff at offset 26)",
    ),
    (
        "metrics-missing-comma",
        "metrics.json",
        _write("metrics.json", '{\n"a": 1\n"b": 2}\n'),
        "not valid JSON (line 3: Expecting ',' delimiter)",
    ),
    (
        "metrics-deeply-nested",
        "metrics.json",
        _write("metrics.json", "[" * 100_000),
        "not valid JSON (nested too deeply",
    ),
    ("metrics-huge-integer", "metrics.json", _write("metrics.json", "9" * 5000), "not valid JSON (Exceeds the limit"),
    ("metrics-missing", "metrics.json", _remove("metrics.json"), "missing"),
    ("metrics-a-directory", "metrics.json", _as_directory("metrics.json"), "cannot be read"),
    (
        "aggregate-mean-string",
        "metrics.json",
        _edit_json("metrics.json", _setting("0.57", "gold_reward", "mean")),
        "'gold_reward.mean' should be a number, got '0.57'",
    ),
    (
        "aggregate-mean-bool",
        "metrics.json",
        _edit_json("metrics.json", _setting(True, "kl", "mean")),
        "'kl.mean' should be a number, got True",
    ),
    (
        "aggregate-se-missing",
        "metrics.json",
        _edit_json("metrics.json", _without("gold_reward", "se")),
        "missing 'gold_reward.se'",
    ),
    (
        "aggregate-n-float",
        "metrics.json",
        _edit_json("metrics.json", _setting(16.5, "gold_reward", "n")),
        "'gold_reward.n' should be an integer, got 16.5",
    ),
    (
        "aggregate-unit-number",
        "metrics.json",
        _edit_json("metrics.json", _setting(3, "pair_accuracy", "unit")),
        "'pair_accuracy.unit' should be a string, got 3",
    ),
    ("config-garbage", "config.json", _write("config.json", "{config: yes}"), "not valid JSON (line 1"),
    ("config-truncated", "config.json", _truncate("config.json"), "not valid JSON"),
    ("config-missing", "config.json", _remove("config.json"), "missing"),
    ("config-no-config-key", "config.json", _edit_json("config.json", _without("config")), "missing 'config'"),
    (
        "config-no-task-name",
        "config.json",
        _edit_json("config.json", _without("config", "task", "name")),
        "missing 'config.task.name'",
    ),
    (
        "config-algo-name-number",
        "config.json",
        _edit_json("config.json", _setting(7, "config", "algo", "name")),
        "'config.algo.name' should be a string, got 7",
    ),
    (
        "config-seed-string",
        "config.json",
        _edit_json("config.json", _setting("0", "config", "seed")),
        "'config.seed' should be an integer, got '0'",
    ),
    (
        "config-train-list",
        "config.json",
        _edit_json("config.json", _setting([], "config", "train")),
        "'config.train' should be an object, got a list",
    ),
    (
        "config-eval-task-number",
        "config.json",
        _edit_json("config.json", _setting(1, "config", "run", "eval_task")),
        "'config.run.eval_task' should be a string, got 1",
    ),
    ("samples-cut-mid-line", "samples.jsonl", _cut_mid_line("samples.jsonl"), "line 33: not valid JSON (column "),
    (
        "samples-row-list",
        "samples.jsonl",
        _edit_row("samples.jsonl", lambda row: [row["prompt"]], index=2),
        "line 3: should be an object, got a list",
    ),
    (
        "samples-missing-completion",
        "samples.jsonl",
        _edit_row("samples.jsonl", _dropping("completion")),
        "line 1: missing 'completion'",
    ),
    (
        "samples-prompt-index-string",
        "samples.jsonl",
        _edit_row("samples.jsonl", lambda row: {**row, "prompt_index": "0"}),
        "line 1: 'prompt_index' should be an integer",
    ),
    (
        "samples-non-utf8",
        "samples.jsonl",
        _append("samples.jsonl", b'{"prompt": "caf\xe9"}\n'),
        "line 65: not UTF-8 text (byte 0xe9)",
    ),
    ("cost-garbage", "cost.json", _write("cost.json", "wall time: 3s\n"), "not valid JSON"),
    ("cost-list", "cost.json", _write("cost.json", "[]"), "should be an object, got a list"),
    (
        "checkpoints-garbage",
        "checkpoints.jsonl",
        _write("checkpoints.jsonl", "step 10: done\n"),
        "line 1: not valid JSON",
    ),
    (
        "checkpoints-step-string",
        "checkpoints.jsonl",
        _edit_row("checkpoints.jsonl", lambda row: {**row, "step": "10"}),
        "line 1: 'step' should be an integer",
    ),
    (
        "checkpoints-metrics-list",
        "checkpoints.jsonl",
        _edit_row("checkpoints.jsonl", lambda row: {**row, "metrics": []}),
        "line 1: 'metrics' should be an object",
    ),
    (
        "checkpoint-aggregate-mean-string",
        "checkpoints.jsonl",
        _edit_row("checkpoints.jsonl", lambda row: {**row, "metrics": {"kl": {"mean": "x", "se": 0, "n": 1}}}),
        "line 1: 'metrics.kl.mean' should be a number",
    ),
    ("train-log-garbage", "train_log.jsonl", _append("train_log.jsonl", "loss=0.3\n"), "line 2: not valid JSON"),
    (
        "train-log-row-number",
        "train_log.jsonl",
        _append("train_log.jsonl", "42\n"),
        "line 2: should be an object, got 42",
    ),
]


def _two_copies(tmp_path: Path, good_record: Path, corrupt) -> tuple[Path, Path, Path]:
    results = tmp_path / "results"
    seed_results(results, [good_record])
    bad = results / BAD
    shutil.copytree(good_record, bad)
    corrupt(bad)
    return results, results / good_record.name, bad


def _one_warning(err: str, bad: Path, name: str, problem: str) -> str:
    """stderr holds exactly one skip warning, one line, naming the bad record and file; no traceback."""
    assert "Traceback" not in err, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    (line,) = warnings
    assert line.startswith(f"warning: skipping {bad}: {name}: "), line
    assert problem in line, (problem, line)
    assert line.endswith("; delete it or rerun its command"), line
    assert not any(line.startswith("error:") for line in err.splitlines()), err
    return line


@pytest.mark.parametrize("name, corrupt, problem", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_corrupted_record_is_named_and_the_others_still_shown(
    tmp_path, cache_dir, good_record, name, corrupt, problem
):
    results, good, bad = _two_copies(tmp_path, good_record, corrupt)

    code, out, err = bench_main(["table", "--task", "sentiment", "--results", results], cache_dir)
    assert code == 0, err
    assert "1 complete runs" in out and "| sft | default | 1 |" in out, out
    _one_warning(err, bad, name, problem)

    report = tmp_path / "report"
    code, out, err = bench_main(["report", "--task", "sentiment", "--results", results, "--out", report], cache_dir)
    assert code == 0, err
    assert "report:" in out, out
    _one_warning(err, bad, name, problem)
    text = (report / "report.md").read_text()
    assert good.name in text and BAD not in text and "1 complete runs" in text, text


@pytest.mark.parametrize(
    "corrupt",
    [_write("metrics.json", "[]"), _remove("config.json"), _cut_mid_line("samples.jsonl")],
    ids=["metrics", "config", "samples"],
)
def test_only_corrupted_records_is_no_complete_runs(tmp_path, cache_dir, good_record, corrupt):
    results = tmp_path / "results"
    bad = results / BAD
    shutil.copytree(good_record, bad)
    corrupt(bad)
    before = {str(p.relative_to(results)) for p in results.rglob("*")}

    code, out, err = bench_main(["table", "--task", "sentiment", "--results", results], cache_dir)
    assert code == 0, err
    assert "No complete runs" in out, out
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith(f"warning: skipping {bad}: "), err

    code, out, err = bench_main(
        ["report", "--task", "sentiment", "--results", results, "--out", tmp_path / "r"], cache_dir
    )
    assert_user_error(code, err, "no complete runs", results, before)
    assert not (tmp_path / "r").exists()


def test_each_bad_record_costs_one_line(tmp_path, cache_dir, good_record):
    results, good, bad = _two_copies(tmp_path, good_record, _write("metrics.json", ""))
    other = results / "sentiment-sft-00000000bad2"
    shutil.copytree(good_record, other)
    (other / "samples.jsonl").write_text("{\n")
    code, out, err = bench_main(["table", "--task", "sentiment", "--results", results], cache_dir)
    assert code == 0 and "1 complete runs" in out, (out, err)
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"warning: skipping {bad}: metrics.json: empty file"), err
    assert lines[1].startswith(f"warning: skipping {other}: samples.jsonl: line 1: not valid JSON"), err


def _odd_but_valid(metrics: dict) -> None:
    metrics["gold_reward"].update(mean=None, se=None)
    metrics["length"] = 45.6  # a plain value where the other run has an aggregate
    metrics["notes"] = {"written_by": "a plugin"}  # an object without a mean is no aggregate


def test_odd_values_and_absent_optional_files_are_not_corruption(tmp_path, cache_dir, good_record):
    """A null mean or se reads as NaN (no value); a run without cost, samples or checkpoints is still a run."""
    results, good, other = _two_copies(tmp_path, good_record, _edit_json("metrics.json", _odd_but_valid))
    for name in ("cost.json", "samples.jsonl", "checkpoints.jsonl"):
        (other / name).unlink()
    _append("train_log.jsonl", '{"loss": 0.5}\n')(other)  # a row without a step: not plotted
    code, out, err = bench_main(["table", "--task", "sentiment", "--results", results], cache_dir)
    assert code == 0 and err == "", err
    assert "2 complete runs" in out and "| sft | default | 2 |" in out, out
    code, out, err = bench_main(
        ["report", "--task", "sentiment", "--results", results, "--out", tmp_path / "r"], cache_dir
    )
    assert code == 0 and "warning" not in err and "Traceback" not in err, err
    assert other.name in (tmp_path / "r" / "report.md").read_text()
    record = records.load_record(other)
    assert math.isnan(record.metrics["gold_reward"]["mean"]) and math.isnan(record.metrics["gold_reward"]["se"])
    assert record.cost == {} and record.samples == [] and record.checkpoints == [] and len(record.train_log) == 2


# ---------------------------------------------------------------- the schema itself


def test_load_record_returns_every_file_of_a_valid_record(good_record):
    record = records.load_record(good_record)
    written = json.loads((good_record / "config.json").read_text())
    assert record.dir == good_record and record.record == written and record.config == written["config"]
    assert record.metrics == json.loads((good_record / "metrics.json").read_text())
    assert record.samples == bench_io.read_jsonl(good_record / "samples.jsonl") and record.samples
    assert record.checkpoints == bench_io.read_jsonl(good_record / "checkpoints.jsonl")
    assert record.train_log == bench_io.read_jsonl(good_record / "train_log.jsonl")
    assert record.cost == json.loads((good_record / "cost.json").read_text())
    # Checked but not kept, for readers of aggregates only.
    assert records.load_record(good_record, keep_samples=False).samples is None


def test_load_record_names_the_file_and_the_problem_in_one_line(tmp_path, good_record):
    bad = tmp_path / BAD
    shutil.copytree(good_record, bad)
    (bad / "metrics.json").write_text('{\n"gold_reward": {"mean": 0.5, "se": 0.1, "n": 4},\n"kl" {}\n}\n')
    with pytest.raises(records.RecordError) as info:
        records.load_record(bad)
    assert info.value.path == bad / "metrics.json"
    assert str(info.value) == f"{bad / 'metrics.json'}: not valid JSON (line 3: Expecting ':' delimiter)"
    # The problem stays on one line even when the bad value is a string with line breaks in it.
    (bad / "metrics.json").write_text(json.dumps({"kl": {"mean": "a\nb", "se": 0, "n": 1}}))
    with pytest.raises(records.RecordError) as info:
        records.load_record(bad, keep_samples=False)
    assert "\n" not in str(info.value) and "'kl.mean' should be a number" in str(info.value)
    # A RecordError is a UserError: should one reach the CLI, it is one line and exit status 2.
    assert isinstance(info.value, records.UserError)


def test_readable_runs_passes_over_other_tasks_and_reports_through_warn(tmp_path, good_record):
    results = tmp_path / "results"
    seed_results(results, [good_record])
    bad = results / BAD
    shutil.copytree(good_record, bad)
    (bad / "cost.json").write_text("{")
    lines: list[str] = []
    assert records.readable_runs(results, "other-task", warn=lines.append) == [] and lines == []
    (run,) = records.readable_runs(results, "sentiment", warn=lines.append)
    assert run.dir == results / good_record.name
    assert lines == [
        f"warning: skipping {bad}: cost.json: not valid JSON (line 1: Expecting property name enclosed "
        "in double quotes, at the end of the file: cut short?); delete it or rerun its command"
    ]
