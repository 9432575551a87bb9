"""Learnable tokens on T5-family encoders (Wan's UMT5, CogVideoX's T5) with the tokenizer trained here.

Checks the placement of the token (after the prompt's pieces, before ``</s>``), the init word's pieces
and their mean, the two pipeline encodings (Wan: attention mask + zeroed padding; CogVideoX: neither),
and that a token override is differentiable and touches nothing else.
"""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

from mpcore.backbones import tiny_t5_tokenizer
from mpcore.text import T5TextTokens

LENGTH = 16


@pytest.fixture(scope="module")
def tokenizer_pieces():
    return tiny_t5_tokenizer()


def _encoder(kind: str, vocab: int):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                  relative_attention_num_buckets=8, dropout_rate=0.0)
    model = UMT5EncoderModel(UMT5Config(**common)) if kind == "umt5" else T5EncoderModel(T5Config(**common))
    return model.eval().requires_grad_(False)  # frozen, as the backbones freeze it


def _tokens(tokenizer, kind: str, wan_style: bool) -> T5TextTokens:
    import copy

    tokenizer = copy.deepcopy(tokenizer)  # add_tokens changes it
    return T5TextTokens(tokenizer, _encoder(kind, len(tokenizer) + 8), torch.device("cpu"), torch.float32, LENGTH,
                        attention_mask=wan_style, zero_padding=wan_style, clean=lambda p: " ".join(p.split()))


def test_token_lands_after_the_prompt_and_before_eos(tokenizer_pieces):
    text = _tokens(tokenizer_pieces, "umt5", True)
    (token_id,) = text.add_tokens(["<mp_0>"])
    ids = text.token_ids("a dog   running <mp_0>")
    assert ids[-2:] == [token_id, text.tokenizer.eos_token_id]
    # the space before the token belongs to it: no stray word-boundary piece, and the prompt's pieces are
    # the same as without the token
    assert ids[:-2] == text.token_ids("a dog running")[:-1]
    assert len(text.tokenizer) - 1 == token_id and text.embedding_table().shape[0] >= len(text.tokenizer)


def test_init_word_is_the_mean_of_its_pieces(tokenizer_pieces):
    text = _tokens(tokenizer_pieces, "t5", False)
    pieces = text.word_pieces("authentic")
    assert len(pieces) > 1 and "".join(pieces).replace("▁", "") == "authentic"
    ids = text.tokenizer.convert_tokens_to_ids(pieces)
    expected = text.embedding_table()[ids].mean(0)
    torch.testing.assert_close(text.word_embedding("authentic"), expected)
    assert not torch.allclose(text.word_embedding("authentic"), text.embedding_table()[ids[0]])


def test_wan_encoding_masks_and_zeroes_the_padding(tokenizer_pieces):
    text = _tokens(tokenizer_pieces, "umt5", True)
    prompt = "a dog running"
    length = len(text.token_ids(prompt))
    hidden = text.encode([prompt])
    assert hidden.shape == (1, LENGTH, 16)
    assert torch.equal(hidden[0, length:], torch.zeros(LENGTH - length, 16))
    inputs = text.tokenizer([prompt], padding="max_length", max_length=LENGTH, return_tensors="pt")
    with torch.no_grad():
        masked = text.text_encoder(inputs.input_ids, attention_mask=inputs.attention_mask).last_hidden_state
        unmasked = text.text_encoder(inputs.input_ids).last_hidden_state
    assert torch.equal(hidden[0, :length], masked[0, :length])
    # the mask reached the encoder: without it the prompt's own positions attend to padding and change
    assert (hidden[0, :length] - unmasked[0, :length]).abs().max() > 1e-4


def test_cogvideox_encoding_keeps_padding_and_no_mask(tokenizer_pieces):
    text = _tokens(tokenizer_pieces, "t5", False)
    prompt = "a dog  running"
    hidden = text.encode([prompt])
    inputs = text.tokenizer(["a dog running"], padding="max_length", max_length=LENGTH, return_tensors="pt")
    with torch.no_grad():
        expected = text.text_encoder(inputs.input_ids).last_hidden_state
    assert torch.equal(hidden, expected)  # cleaned prompt, no mask, padding kept
    assert hidden[0, -1].abs().max() > 0


def test_token_override_is_differentiable_and_touches_only_its_row(tokenizer_pieces):
    text = _tokens(tokenizer_pieces, "umt5", True)
    (token_id,) = text.add_tokens(["<mp_0>"])
    text.set_rows([token_id], text.word_embedding("authentic")[None])
    table_before = text.embedding_table().detach().clone()
    row = torch.nn.Parameter(text.word_embedding("authentic") + 0.5)
    guided = text.encode(["a dog running <mp_0>"], override={token_id: row})
    plain = text.encode(["a dog running <mp_0>"])
    assert (guided - plain).abs().max() > 1e-4
    guided.square().sum().backward()
    assert row.grad is not None and row.grad.abs().sum() > 0
    assert torch.equal(text.embedding_table().detach(), table_before)
    assert text.embedding_table().grad is None
