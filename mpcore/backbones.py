"""Glue every backbone plugin shares: attention choice, freezing, loading errors, defaults, describe.

The backbone plugins (``mp-plugin-animatediff``, ``mp-plugin-lavie``, ``mp-plugin-lvdm``) hold the
model knowledge; what is the same in all of them lives here, once, for them and for third-party
backbones alike. The core imports no plugin, and this module imports neither a plugin nor click:
plugins import it. Importing it is cheap (torch, diffusers and transformers are imported inside the
functions that need them).
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, Callable, Iterator

ATTENTION_CHOICES = ("auto", "sdpa", "xformers")


# ----------------------------------------------------------------------------- plugin entry points


def lazy_load(module: str, **bound: Any) -> Callable[..., Any]:
    """``BackboneSpec.load`` that imports ``module`` (with torch and the model code) only when a model
    is loaded, then calls its ``load(**bound, **kwargs)``; the function is looked up at each call."""

    def load(**kwargs: Any) -> Any:
        return importlib.import_module(module).load(**bound, **kwargs)

    return load


def defaults_by_model(default: dict[str, Any], **reserved: str) -> Callable[[str | None], dict[str, Any]]:
    """``f(model) -> defaults`` for ``BackboneSpec.sampler_defaults``/``motionprompt_defaults``: a copy
    of ``default``, or for a reserved model name (``tiny=``, ``toy=``) a copy of the dict at
    ``"package.module:NAME"``, imported only when that model is asked for (its module may import torch)."""

    def defaults(model: str | None) -> dict[str, Any]:
        if model in reserved:
            module, name = reserved[model].split(":")
            return dict(getattr(importlib.import_module(module), name))
        return dict(default)

    return defaults


# ----------------------------------------------------------------------------- local or hub


class ModelNotFoundError(FileNotFoundError):
    """A model file or folder is missing or is not a model; the message says what to pass. A
    FileNotFoundError, so the CLI prints it as a user error (one line, exit 1)."""


def looks_local(name: str) -> bool:
    """A path rather than a hub id (``owner/name``): exists, or starts like a path, ends like a
    checkpoint file, or has other than exactly one ``/``."""
    from mpcore.io.weights import CHECKPOINT_SUFFIXES

    return (
        Path(name).expanduser().exists()
        or name.startswith((".", "/", "~"))
        or name.endswith(CHECKPOINT_SUFFIXES)
        or name.count("/") != 1
    )


def require_file(name: str, what: str, how: str) -> None:
    """``name`` is an existing file, else :class:`ModelNotFoundError` naming the path and ``how`` to pass one."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"{what} not found at {path}. {how}")


def hub_error(name: str, what: str, error: Exception, flag: str | None = None) -> ModelNotFoundError:
    """The error for a ``from_pretrained`` of ``name`` that raised ``error`` (an OSError): for a hub id,
    how to load it without network access (download it, then pass the folder with ``flag``)."""
    if Path(name).expanduser().exists():
        return ModelNotFoundError(f"could not load {what} {name}: {type(error).__name__}: {error}")
    return ModelNotFoundError(
        f"could not load {what} {name!r}: {type(error).__name__}: {error}\n"
        f"Without network access, download it first (e.g. `hf download {name}`) and pass the local "
        f"folder{' with ' + flag if flag else ''}, or set HF_HUB_OFFLINE=1 to use the local cache."
    )


def torch_load(path: str | Path) -> Any:
    """``torch.load`` of a checkpoint (tensors only, on the CPU), memory-mapped when the file allows it,
    so a multi-GB file is not read twice."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch.save format: no mmap
        return torch.load(str(path), map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- the loaded model


def choose_attention(attention: str, device: Any) -> str:
    """``--attention`` -> the attention to use, ``"xformers"`` or ``"sdpa"`` (torch scaled-dot-product
    attention, diffusers' default processors): ``auto`` takes xformers only on CUDA with the package
    installed; ``xformers`` without either is an error that says to use sdpa."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"--attention must be one of {', '.join(ATTENTION_CHOICES)}, got {attention!r}")
    try:
        import xformers  # noqa: F401

        have_xformers = True
    except ImportError:
        have_xformers = False
    if attention == "xformers" and (not have_xformers or device.type != "cuda"):
        raise RuntimeError(
            "--attention xformers needs a CUDA device and the xformers package (pip install 'mpcore[xformers]'); "
            "use --attention sdpa (torch scaled-dot-product attention) instead"
        )
    if attention == "xformers" or (attention == "auto" and have_xformers and device.type == "cuda"):
        return "xformers"
    return "sdpa"


def freeze(*modules: Any) -> None:
    """No gradients into the weights, inference mode (dropout off): guidance only optimizes tokens."""
    for module in modules:
        module.requires_grad_(False)
        module.eval()


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' "modules that should be kept in float32: []" notice on our own casts (diffusers
    logs it at every ``to(dtype)`` of a model, even when the list is empty); errors still show."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def describe(backbone: Any, **details: Any) -> dict[str, Any]:
    """The manifest's record of a loaded backbone: name, its source (model, files, options), random
    init or not, dtype, device, then the backbone's own ``details``."""
    return {
        "name": backbone.name,
        **backbone.source,
        "random_init": backbone.is_random_init,
        "dtype": str(backbone.dtype).replace("torch.", ""),
        "device": str(backbone.device),
        **details,
    }


# ----------------------------------------------------------------------------- tiny models


def tiny_clip_text_encoder(width: int, ffn: int = 37, layers: int = 2) -> Any:
    """A random-init CLIP text encoder with CLIP's real 49408-token vocabulary (tiny widths), drawn
    from the current torch RNG; pair it with :func:`tiny_clip_tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from mpcore.clip_vocab import VOCAB_SIZE

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=width,
            intermediate_size=ffn,
            num_attention_heads=4,
            num_hidden_layers=layers,
            max_position_embeddings=77,
            bos_token_id=VOCAB_SIZE - 2,
            eos_token_id=VOCAB_SIZE - 1,
            pad_token_id=VOCAB_SIZE - 1,
            hidden_act="quick_gelu",
            projection_dim=width,
        )
    )


def tiny_clip_tokenizer() -> Any:
    """The exact CLIP tokenizer, rebuilt offline (:func:`mpcore.clip_vocab.build_clip_tokenizer`) in a temp
    folder; its BOS/EOS ids are the ones :func:`tiny_clip_text_encoder` is configured with."""
    import tempfile

    from mpcore.clip_vocab import BOS, EOS, VOCAB_SIZE, build_clip_tokenizer

    tokenizer = build_clip_tokenizer(Path(tempfile.mkdtemp(prefix="mpcore-clip-tokenizer-")))
    assert tokenizer.convert_tokens_to_ids(BOS) == VOCAB_SIZE - 2 and tokenizer.convert_tokens_to_ids(EOS) == VOCAB_SIZE - 1
    return tokenizer
