"""Learnable prompt tokens on a Hugging Face text encoder (CLIP in SD-family backbones; T5 / UMT5 in
the DiT backbones, :class:`T5TextTokens`).

New tokens are added to the tokenizer and the embedding table is resized (docs/design.md, "The method", step 1).
During optimization a forward hook on the input-embedding module substitutes the learnable rows
wherever the new ids occur, so gradients reach only those rows and the table itself is never
touched by the optimizer: every other row stays bit-identical by construction.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from mpcore.interfaces import TextTokens


class HFTextTokens(TextTokens):
    """:class:`TextTokens` for a transformers tokenizer + text model (e.g. ``CLIPTextModel``)."""

    def __init__(self, tokenizer, text_encoder, device: torch.device, dtype: torch.dtype):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self.dtype = dtype
        self._override: dict[int, torch.Tensor] | None = None
        self._hooks = self._hook_embeddings()

    def _hook_embeddings(self) -> list:
        """Forward hooks on every embedding module holding the input table: T5-family encoders (transformers
        5) look tokens up through ``encoder.embed_tokens``, a module other than ``get_input_embeddings()``
        (``shared``) that shares its weight, so a hook on that one alone would never run."""
        table = self.text_encoder.get_input_embeddings().weight
        return [m.register_forward_hook(self._substitute_rows) for m in self.text_encoder.modules()
                if isinstance(m, torch.nn.Embedding) and m.weight is table]

    # -- tokens
    def add_tokens(self, tokens: list[str]) -> list[int]:
        self.tokenizer.add_tokens(tokens, special_tokens=False)
        ids = self.tokenizer.convert_tokens_to_ids([str(t) for t in tokens])  # str(AddedToken) is its text
        if len(self.tokenizer) > self.embedding_table().shape[0]:
            # new rows are overwritten from the init words, so no mean-resizing initialisation
            self.text_encoder.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            for hook in self._hooks:  # the embedding modules may have been replaced
                hook.remove()
            self._hooks = self._hook_embeddings()
        return list(ids)

    def word_embedding(self, word: str) -> torch.Tensor:
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"init word {word!r} tokenizes to nothing")
        return self.embedding_table()[ids].detach().float().mean(0)

    def word_pieces(self, word: str) -> list[str]:
        """The tokenizer's pieces of ``word`` (:meth:`word_embedding` is their mean), for the manifest."""
        return self.tokenizer.convert_ids_to_tokens(self.tokenizer(word, add_special_tokens=False).input_ids)

    def embedding_table(self) -> torch.Tensor:
        return self.text_encoder.get_input_embeddings().weight

    @torch.no_grad()
    def set_rows(self, ids: list[int], values: torch.Tensor) -> None:
        table = self.embedding_table()
        table[ids] = values.to(device=table.device, dtype=table.dtype)

    def token_ids(self, prompt: str, truncate: bool = True) -> list[int]:
        if truncate:
            return self.tokenizer(prompt, truncation=True, max_length=self.tokenizer.model_max_length).input_ids
        return self.tokenizer(prompt, truncation=False).input_ids

    # -- encoding
    def encode(self, prompts: list[str], override: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """CLIP ``last_hidden_state`` of max-length-padded prompts, as diffusers' SD pipelines encode."""
        inputs = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attention_mask = inputs.attention_mask.to(self.device)
        with self._overriding(override):
            hidden = self.text_encoder(inputs.input_ids.to(self.device), attention_mask=attention_mask)[0]
        return hidden.to(dtype=self.dtype, device=self.device)

    @contextlib.contextmanager
    def _overriding(self, override):
        self._override = override
        try:
            yield
        finally:
            self._override = None

    def _substitute_rows(self, module, args, output):
        if not self._override:
            return output
        (input_ids,) = args[:1]
        for token_id, row in self._override.items():
            mask = (input_ids == token_id).unsqueeze(-1)
            output = torch.where(mask, row.to(dtype=output.dtype, device=output.device), output)
        return output


class T5TextTokens(HFTextTokens):
    """:class:`TextTokens` on a T5-family encoder (UMT5 for Wan, T5 v1.1 for CogVideoX), encoding as
    the backbone's diffusers pipeline does.

    The learnable tokens are added tokens of the sentencepiece tokenizer: appended to the prompt's
    text, they land after the prompt's pieces and before the ``</s>`` the tokenizer appends, then the
    padding, as every other word would. An init word that splits into several pieces is initialised
    from the mean of their embeddings (:meth:`word_embedding`; the pieces are recorded).

    Encoding (``max_sequence_length`` tokens, padded and truncated as the pipeline pads them):

    * ``attention_mask=True, zero_padding=True`` -- ``WanPipeline``: the encoder sees the attention
      mask, and the hidden states of padding positions are replaced by zeros.
    * ``attention_mask=False, zero_padding=False`` -- ``CogVideoXPipeline``: no mask, the padding
      positions' hidden states are kept.

    ``clean`` is applied to each prompt first (Wan's ``prompt_clean``: ftfy + whitespace).
    """

    def __init__(self, tokenizer, text_encoder, device: torch.device, dtype: torch.dtype, max_sequence_length: int,
                 attention_mask: bool, zero_padding: bool, clean: Callable[[str], str] | None = None):
        super().__init__(tokenizer, text_encoder, device, dtype)
        self.max_sequence_length = max_sequence_length
        self.attention_mask = attention_mask
        self.zero_padding = zero_padding
        self.clean = clean

    def add_tokens(self, tokens: list[str]) -> list[int]:
        from transformers import AddedToken

        # lstrip: the space before a token appended as " <mp_0>" belongs to it (no stray "▁" piece)
        return super().add_tokens([AddedToken(t, lstrip=True, rstrip=False, normalized=False) for t in tokens])

    def token_ids(self, prompt: str, truncate: bool = True) -> list[int]:
        prompt = self.clean(prompt) if self.clean else prompt
        if truncate:
            return self.tokenizer(prompt, truncation=True, max_length=self.max_sequence_length).input_ids
        return self.tokenizer(prompt, truncation=False).input_ids

    def encode(self, prompts: list[str], override: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        prompts = [self.clean(p) for p in prompts] if self.clean else list(prompts)
        inputs = self.tokenizer(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = inputs.input_ids.to(self.device), inputs.attention_mask.to(self.device)
        with self._overriding(override):
            hidden = self.text_encoder(ids, attention_mask=mask if self.attention_mask else None).last_hidden_state
        if self.zero_padding:  # positions past each prompt's length become exact zeros
            hidden = torch.where(mask.bool().unsqueeze(-1), hidden, torch.zeros_like(hidden))
        return hidden.to(dtype=self.dtype, device=self.device)
