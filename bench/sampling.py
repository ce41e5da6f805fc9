"""Batched sampling from a causal LM with a KV cache: temperature, nucleus (top-p), fixed seeds.

Every completion the suite scores (evaluation samples, preference data, best-of-N candidates,
PPO rollouts) comes from `sample`. The decode loop is written out by hand instead of calling
`model.generate`: for the small models this suite runs on a CPU, generate's per-step framework
overhead (logits processors, stopping criteria, cache bookkeeping) costs more than the forward
pass itself. The loop also drops rows from the batch as soon as they emit eos, so a batch costs
as much as its live rows, not its longest completion times its size.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from bench import distributed, fsdp, seeds


def sample(
    model,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_token_id: int | None,
    pad_token_id: int,
    seed: int,
    batch_size: int = 64,
    desc: str | None = None,
) -> list[list[int]]:
    """Sample one completion per prompt; returns token ids without padding, in prompt order.

    A completion stops after `max_new_tokens` tokens, or right after eos (which it then
    includes). `temperature=0` is greedy decoding. The result depends only on the model, the
    prompts, `seed` and `batch_size`: prompts are grouped by length (less padding) and batch
    number b draws from a generator seeded with (seed, b). With several processes, batch b is
    sampled on rank b % world and every rank receives all completions: the same ones, since each
    batch keeps its prompts and its seed whatever the number of processes.
    """
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("sample: every prompt needs at least one token")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"sample: need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    completions: list[list[int]] = [[] for _ in prompt_ids]
    if max_new_tokens <= 0 or not prompt_ids:
        return completions

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    was_training = model.training
    model.eval()
    # With several processes each samples its share of the batches (bench.distributed.map_sharded).
    mine = sum(len(batches[b]) for b in distributed.my_jobs(len(batches)))
    bar = tqdm(total=mine, desc=desc, unit="prompt", dynamic_ncols=True, leave=False, disable=desc is None)

    def one_batch(b: int, rows: list[int]) -> list[list[int]]:
        # Modulo 2**64, the most a generator takes: the same seeds as before wherever they fitted.
        generator = torch.Generator(device=model.device).manual_seed(seeds.stream(seed, b))
        out = _sample_batch(
            model,
            [prompt_ids[i] for i in rows],
            max_new_tokens,
            temperature,
            top_p,
            eos_token_id,
            pad_token_id,
            generator,
        )
        bar.update(len(rows))
        return out

    try:
        # A sharded policy's forward hooks keep tensors that later training passes update: no inference tensors then.
        with torch.no_grad() if fsdp.any_sharded() else torch.inference_mode():
            for rows, out in zip(batches, distributed.map_sharded(one_batch, batches)):
                for i, completion in zip(rows, out):
                    completions[i] = completion
    finally:
        bar.close()
        model.train(was_training)
    return completions


def _sample_batch(model, prompts, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id, generator):
    device = model.device
    width = max(len(p) for p in prompts)
    # Left padding puts every prompt's last token in the last column, so one step feeds one column.
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        input_ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention_mask[r, width - len(p) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # Positions count real tokens only, so a padded prompt sees the positions it would see alone.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    cache_arg = _cache_argument(model)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **{cache_arg: preallocated_cache(model, width + max_new_tokens)},
    )
    cache, logits = out.past_key_values, out.logits[:, -1]
    decode = gpt2_decode_step(model, cache)
    next_position = position_ids[:, -1:] + 1
    live = list(range(len(prompts)))  # batch row -> prompt slot, shrinks as rows finish
    completions: list[list[int]] = [[] for _ in prompts]

    for step in range(max_new_tokens):
        tokens = _next_tokens(logits, temperature, top_p, generator)
        for slot, token in zip(live, tokens.tolist()):
            completions[slot].append(token)
        if step == max_new_tokens - 1:
            break
        if eos_token_id is not None:
            going = tokens != eos_token_id
            if not going.all():
                if not going.any():
                    break
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                attention_mask, next_position, tokens = attention_mask[keep], next_position[keep], tokens[keep]
                live = [live[k] for k in keep.tolist()]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
        if decode is not None:
            logits = decode(tokens, attention_mask, next_position)
        else:
            out = model(
                input_ids=tokens[:, None],
                attention_mask=attention_mask,
                position_ids=next_position,
                use_cache=True,
                **{cache_arg: cache},
            )
            logits = out.logits[:, -1]
        next_position = next_position + 1
    return completions


def _cache_argument(model) -> str:
    """The forward's name for the KV cache: `cache` in recent transformers (which deprecate past_key_values)."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it on
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


# Architectures whose every layer attends to the whole past (no sliding window, no recurrent state): a cache of
# full keys and values per layer is all they need.
_FULL_ATTENTION = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})


def preallocated_cache(model, capacity: int):
    """A KV cache with room for `capacity` positions per row, or None (the model's own cache) where not known to fit.

    transformers' DynamicCache appends each step's keys and values with torch.cat, copying the whole cache of
    every layer at every step: a quarter of a decode step's time on the default task's policy. This one
    writes each step's column into a buffer allocated once and hands attention a view of the filled part; the
    keys, values and so the samples are the same, bit for bit (tests/test_sampling.py).
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in _FULL_ATTENTION or getattr(config, "sliding_window", None):
        return None
    if any("sliding" in str(kind) for kind in getattr(config, "layer_types", None) or ()):
        return None
    try:
        from transformers.cache_utils import Cache, DynamicLayer
    except ImportError:  # transformers before the layered caches (4.5x): its own cache then
        return None

    class Preallocated(DynamicLayer):
        # Buffers are (rows, positions, heads, width), handed to attention as (rows, heads, positions, width)
        # views: SDPA reads that layout faster than a slice of (rows, heads, capacity, width), same bits.
        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            rows, heads, _, width = key_states.shape
            self.buffers = (
                key_states.new_empty(rows, capacity, heads, width),
                value_states.new_empty(rows, capacity, heads, value_states.shape[-1]),
            )
            self.length = 0

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.append(key_states.transpose(1, 2), value_states.transpose(1, 2))
            return self.keys, self.values

        def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            """Write (rows, positions, heads, width) keys and values after the filled positions."""
            end = self.length + keys.shape[1]
            if end > capacity:
                raise RuntimeError(f"preallocated_cache: {end} positions, room for {capacity}")
            self.buffers[0][:, self.length : end] = keys
            self.buffers[1][:, self.length : end] = values
            self.length = end
            self._views()

        def _views(self) -> None:
            self.keys, self.values = (b[:, : self.length].transpose(1, 2) for b in self.buffers)

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                # Only the filled positions move: the rest of each buffer holds nothing yet.
                self.buffers = tuple(self._select(buffer, indices) for buffer in self.buffers)
                self._views()

        def _select(self, buffer: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            out = buffer.new_empty(len(indices), *buffer.shape[1:])
            torch.index_select(buffer[:, : self.length], 0, indices, out=out[:, : self.length])
            return out

    return Cache(layer_class_to_replicate=Preallocated)


def gpt2_decode_step(model, cache):
    """One decode step of a plain GPT-2 written out in the ops its transformers forward runs, or None.

    On the default task's policy (3 x 192) transformers' forward spends about a quarter of a decode step
    outside arithmetic (module calls, mask building, cache bookkeeping); this step calls the same kernels
    in the same order on the same tensors (layer norm, addmm, SDPA with the same mask, the model's own
    activation), so its logits and samples are the same bit for bit (tests/test_sampling.py), in ~0.7x
    the time. It writes each step's keys and values into `cache` (a preallocated_cache, after the
    prompt's forward). Anything else, such as an adapter, another attention or cross-attention, gets None
    and the model's own forward.
    """
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        return None
    config = model.config
    layers = getattr(cache, "layers", None)
    if (
        type(model) is not GPT2LMHeadModel
        or model.training
        or config._attn_implementation != "sdpa"
        or config.add_cross_attention
        or config.scale_attn_by_inverse_layer_idx
        or config.reorder_and_upcast_attn
        or not layers
        or not all(hasattr(layer, "append") for layer in layers)
        or any(hasattr(module, "_hf_hook") for module in model.modules())  # offloading or device-map hooks
    ):
        return None
    body, width = model.transformer, config.n_embd
    heads = config.n_head
    head_dim = width // heads
    import torch.nn.functional as F

    def layer_norm(x, ln):
        return F.layer_norm(x, (width,), ln.weight, ln.bias, ln.eps)

    def linear(x, conv):  # transformers' Conv1D: addmm of the bias, the rows and the (in, out) weight
        return torch.addmm(conv.bias, x.reshape(-1, x.shape[-1]), conv.weight).view(x.shape[0], 1, -1)

    def step(tokens: torch.Tensor, attention_mask: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        rows = tokens.shape[0]
        # transformers passes no mask where every position is attended (sdpa_mask), a boolean one otherwise.
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
        hidden = F.embedding(tokens[:, None], body.wte.weight) + F.embedding(position, body.wpe.weight)
        for block, layer in zip(body.h, layers):
            attn = block.attn
            qkv = linear(layer_norm(hidden, block.ln_1), attn.c_attn)
            query, key, value = qkv.split(width, dim=2)
            layer.append(key.view(rows, 1, heads, head_dim), value.view(rows, 1, heads, head_dim))
            out = F.scaled_dot_product_attention(
                query.view(rows, 1, heads, head_dim).transpose(1, 2),
                layer.keys,
                layer.values,
                attn_mask=mask,
                scale=attn.scaling,
            )
            out = out.transpose(1, 2).contiguous().reshape(rows, 1, width)
            hidden = linear(out, attn.c_proj) + hidden
            mlp = block.mlp
            hidden = hidden + linear(mlp.act(linear(layer_norm(hidden, block.ln_2), mlp.c_fc)), mlp.c_proj)
        return F.linear(layer_norm(hidden, body.ln_f), model.lm_head.weight)[:, -1]

    return step


def _next_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else a draw from softmax(logits / T) cut to the top-p nucleus."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    probs = torch.softmax(logits if temperature == 1 else logits / temperature, dim=-1)  # x / 1 is x, bit for bit
    if top_p < 1:
        sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
        # Keep the smallest set of most likely tokens whose mass reaches top_p (always the top one).
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, sorted_ids, sorted_probs)
    # Inverse-CDF draw: one uniform per row against the cumulative distribution. Same law as
    # torch.multinomial, which on CPU takes ~13x longer (20 ms vs 1.5 ms for 256 x 4096) and
    # was then the most expensive part of a decode step.
    cdf = probs.double().cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    # right=True: the first token whose cdf exceeds u, so tokens of zero probability are never chosen.
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)
