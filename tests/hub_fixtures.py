"""Local stand-ins for hub datasets and models, in the formats the hub serves, for the paper tasks' tests.

Datasets are written by `datasets` as Parquet files laid out as on the hub
(`<dir>/data/<split>-00000-of-00001.parquet`), so `datasets.load_dataset(<dir>)` reads them through
the same call a hub id takes. Models are tiny, built from a config and written by `save_pretrained`
with a byte-level BPE tokenizer trained on the fixture's own text.

Each paper task has a module `tests/fixtures_<task>.py` with `make(root: Path) -> dict` that writes
its fixtures under `root` and returns the `--set task.KEY=VALUE` settings that point the task at them
(conftest.py collects them for the contract tests).
"""

from __future__ import annotations

from pathlib import Path


def write_dataset(root: Path, splits: dict[str, list[dict]]) -> Path:
    """One Parquet file per split, in the hub's layout; returns the directory to pass as the dataset."""
    import datasets

    datasets.disable_progress_bars()
    for split, rows in splits.items():
        path = Path(root) / "data" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return Path(root)


def tiny_tokenizer(texts: list[str], vocab_size: int = 400, model_max_length: int = 512):
    from bench.tasks.sentiment import train_tokenizer

    return train_tokenizer(texts, vocab_size, model_max_length)


def tiny_causal_lm(
    root: Path, texts: list[str], *, vocab_size: int = 400, n_positions: int = 512, seed: int = 0
) -> Path:
    """A 2-layer, 32-wide GPT-2 (random weights) and its tokenizer, saved as a hub model directory."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer(texts, vocab_size, n_positions)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(root)
    tok.save_pretrained(root)
    return Path(root)


def tiny_classifier(
    root: Path, texts: list[str], labels: tuple[str, ...] = ("NEGATIVE", "POSITIVE"), seed: int = 0
) -> Path:
    """A tiny GPT-2 sequence classifier with named labels (random weights), saved as a hub model directory."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = tiny_tokenizer(texts)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=512,
        n_embd=32,
        n_layer=2,
        n_head=2,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(root)
    tok.save_pretrained(root)
    return Path(root)
