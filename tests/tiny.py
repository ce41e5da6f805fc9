"""Tiny models and a tiny tokenizer built in memory, for tests that need a real causal LM.

Everything here is built from a config in well under a second: no downloads, no files.
Weights are drawn with a larger spread than the library default (`init_std`), so next-token
distributions are peaked rather than nearly uniform; greedy decoding then has no near-ties
that could flip between two mathematically equal computations.
"""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SENTENCES = [
    "the movie was great and the acting was wonderful",
    "the film was terrible and the plot made no sense",
    "i loved every minute of this beautiful story",
    "a boring script with flat characters and bad jokes",
    "the music was lovely but the ending felt rushed",
    "one of the best films i have seen this year",
    "not worth the ticket price at all",
    "brilliant direction and a moving performance",
]
EOS = "<|endoftext|>"
PAD = "<pad>"


def _eval(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    return model


def tiny_gpt2(
    vocab_size: int = 64,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    n_positions: int = 128,
    init_std: float = 0.4,
    eos_token_id: int | None = None,
) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 (eval mode). eos defaults to the last id of the vocabulary."""
    eos = vocab_size - 1 if eos_token_id is None else eos_token_id
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        initializer_range=init_std,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    return _eval(GPT2LMHeadModel(config))


def tiny_llama(
    vocab_size: int = 64,
    seed: int = 0,
    num_hidden_layers: int = 2,
    hidden_size: int = 32,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 128,
    init_std: float = 0.4,
    eos_token_id: int | None = None,
) -> LlamaForCausalLM:
    """A 2-layer Llama with grouped-query attention and rotary positions (eval mode)."""
    eos = vocab_size - 1 if eos_token_id is None else eos_token_id
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return _eval(LlamaForCausalLM(config))


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few movie-review sentences, with eos and pad tokens.

    Byte-level means any text encodes (no unknown tokens); the 256 byte symbols and the two
    special tokens, eos (id 0) and pad (id 1), count towards `vocab_size`, so build a matching
    model with `vocab_size=len(tokenizer)`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
