"""Learnable prompt tokens on a Hugging Face text encoder (CLIP in SD-family backbones).

New tokens are added to the tokenizer and the embedding table is resized (DESIGN.md step 1).
During optimization a forward hook on the input-embedding module substitutes the learnable rows
wherever the new ids occur, so gradients reach only those rows and the table itself is never
touched by the optimizer: every other row stays bit-identical by construction.
"""

from __future__ import annotations

import contextlib

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
        self._hook = text_encoder.get_input_embeddings().register_forward_hook(self._substitute_rows)

    # -- tokens
    def add_tokens(self, tokens: list[str]) -> list[int]:
        self.tokenizer.add_tokens(tokens, special_tokens=False)
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        if len(self.tokenizer) > self.embedding_table().shape[0]:
            # new rows are overwritten from the init words, so no mean-resizing initialisation
            self.text_encoder.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            self._hook.remove()  # the embedding module may have been replaced
            self._hook = self.text_encoder.get_input_embeddings().register_forward_hook(self._substitute_rows)
        return list(ids)

    def word_embedding(self, word: str) -> torch.Tensor:
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"init word {word!r} tokenizes to nothing")
        return self.embedding_table()[ids].detach().float().mean(0)

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
