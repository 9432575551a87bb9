"""The exact CLIP BPE tokenizer (49408 tokens), rebuilt offline from open-clip-torch's bundled file.

open-clip-torch ships ``bpe_simple_vocab_16e6.txt.gz`` (the merges CLIP was trained with). CLIP's
vocabulary is: the 256 byte-level symbols, the same with ``</w>``, one token per merge (the first
49152 - 256 - 2 merges), then ``<|startoftext|>`` and ``<|endoftext|>`` (OpenAI CLIP,
``simple_tokenizer.py`` layout). Writing it as vocab.json + merges.txt gives a transformers
``CLIPTokenizer`` identical to ``openai/clip-vit-large-patch14``'s, without a download.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clip_merges() -> list[str]:
    path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    return lines[1 : VOCAB_SIZE - 2 * 256 - 2 + 1]  # the 48894 merges CLIP uses


def write_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write vocab.json and merges.txt of the CLIP tokenizer into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    merges = clip_merges()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def build_clip_tokenizer(folder: str | Path, model_max_length: int = 77):
    """A transformers ``CLIPTokenizer`` with CLIP's exact vocabulary, saved in ``folder``."""
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(
        str(folder), bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=model_max_length
    )
    tokenizer.save_pretrained(folder)
    return tokenizer
