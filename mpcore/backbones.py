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


SD_TINY_DECODER = "madebyollin/taesd"
"""TAESD (Bohan 2023) as a diffusers ``AutoencoderTiny`` on the hub: a tiny decoder of SD-1/2's VAE
latent space, the one AnimateDiff, LaVie, VideoCrafter2 and DynamiCrafter share
(``-o guidance_decoder=tiny``)."""


def sd_tiny_decoder(model: str | None) -> str | None:
    """``BackboneSpec.default_guidance_decoder`` of a backbone built on Stable Diffusion's VAE latent
    space: TAESD (:data:`SD_TINY_DECODER`) for every model but the reserved random ``tiny`` one (its
    random VAE has no tiny decoder: pass ``-o guidance_decoder_path``)."""
    return None if model == "tiny" else SD_TINY_DECODER


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


def diffusers_dtype_argument() -> str:
    """The keyword ``from_pretrained`` / ``from_single_file`` take the load dtype by: ``dtype`` since
    diffusers 0.40 (0.42 warns that ``torch_dtype`` is deprecated), ``torch_dtype`` before."""
    import diffusers

    return "dtype" if tuple(map(int, diffusers.__version__.split(".")[:2])) >= (0, 40) else "torch_dtype"


FP32_CAST_LOGGER = "diffusers.models.modeling_utils"
FP32_CAST_NOTICE = "There are modules in "
"""Where diffusers' ``ModelMixin.to(dtype)`` logs "There are modules in X that should be kept in float32: [...].
Casting directly with `to()` ..." (the logger's name and the message's start)."""

QUIET_NOTICES = (
    # ModelMixin.to(dtype), at every cast, even with an empty list
    (FP32_CAST_LOGGER, FP32_CAST_NOTICE, "should be kept in float32"),
    # AutoencoderTiny registers block_out_channels itself, so every folder diffusers saves has it and every load
    # of one (TAESD's too) logs that the key is unexpected
    ("diffusers.configuration_utils", "The config attributes {'block_out_channels': ",
     "were passed to AutoencoderTiny, but are not expected"),
)
"""The diffusers notices :func:`quiet_diffusers` drops: (logger name, message start, text the message contains)."""


def is_quiet_notice(record: Any) -> bool:
    """True for exactly one of :data:`QUIET_NOTICES` (a ``logging.LogRecord``)."""
    message = record.getMessage()
    return any(record.name == logger and message.startswith(start) and part in message
               for logger, start, part in QUIET_NOTICES)


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Drop diffusers' "There are modules in X that should be kept in float32: [...]" notice while our own code
    (or a diffusers constructor we call, e.g. ``AnimateDiffPipeline`` building its ``UNetMotionModel``) casts a
    model with ``to(dtype)``: diffusers logs it at every such cast, even when the list is empty; and the other
    notice of :data:`QUIET_NOTICES`. Only those messages of those loggers are filtered, and only inside the
    block; every other diffusers message (a missing weight, a deprecation) still shows."""
    import logging

    loggers = [logging.getLogger(name) for name in dict.fromkeys(name for name, _, _ in QUIET_NOTICES)]

    def keep(record: logging.LogRecord) -> bool:
        return not is_quiet_notice(record)

    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(keep)


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


# Words of the tiny sentencepiece tokenizer's training text: the prompts of the tests, examples and
# benchmarks, MotionPrompt's init words, and enough common words for any short English prompt to tokenize
# into pieces (unknown words split into shorter pieces, down to single characters).
_TINY_T5_WORDS = (
    "a an the of in on at with and to from by over under through into near across along while is are "
    "dog cat horse bird fish car boat train plane person man woman child people crowd dancer runner "
    "running walking flying swimming dancing jumping driving riding turning rolling falling spinning waving "
    "beach ocean sea river lake forest mountain city street road field sky clouds snow rain sunset night "
    "camera slowly quickly smoothly gently past around toward away left right up down background foreground "
    "authentic real clear natural realistic smooth detailed sharp vivid high quality video photo scene shot "
    "red blue green yellow white black golden bright dark small large old young happy wind waves fire light "
    "astronaut robot panda teddy bear guitar playing eating reading sitting standing looking at its his her"
).split()


def tiny_t5_tokenizer(vocab_size: int = 1000, seed: int = 0) -> Any:
    """A small T5-style sentencepiece (Unigram) tokenizer trained here, offline and deterministically,
    on sentences drawn from a fixed word list: ``T5TokenizerFast`` with T5's special-token layout
    (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2; ``</s>`` appended to every sequence; ``▁`` word
    boundaries; every ASCII letter, digit and punctuation mark is a piece, so no prompt is unknown).
    The trainer keeps fewer pieces than ``vocab_size`` on so small a text (about 280), and many words
    split into several pieces ('authentic' -> '▁', 'aut', 'h', 'ent', 'ic'). For the tiny Wan /
    CogVideoX models and their tests, which cannot download T5's."""
    import random
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(_TINY_T5_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(1000)]
    sentences += _TINY_T5_WORDS  # every word on its own too, so each is likely one piece
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False,
                                      initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation))
    tokenizer.train_from_iterator(sentences, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0)
    assert (fast.pad_token_id, fast.eos_token_id, fast.unk_token_id) == (0, 1, 2)
    return fast


# ----------------------------------------------------------------------------- real size, random weights
# Benchmarks measure time and memory, which do not depend on the weight values: each backbone plugin
# builds its official architecture with random weights (``random_real.py``), no download. Modules are
# constructed with their parameters on the meta device (nothing allocated, no init cost; buffers such as
# sinusoidal tables and schedules are computed for real), then the parameters are materialized with a
# cheap deterministic init, directly on the target device and in the target dtype.

# SD-1.x ``vae/config.json`` (CompVis/stable-diffusion-v1-4, stable-diffusion-v1-5): 83,653,863 parameters.
SD_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu", norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)
# The text tower of CLIP ViT-L/14 (openai/clip-vit-large-patch14; SD-1.x ``text_encoder``): 123,060,480
# parameters. BOS/EOS are the tokenizer's ids (:func:`tiny_clip_tokenizer` is the exact CLIP tokenizer).
CLIP_VIT_L14_TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules constructed inside get their parameters on the meta device (shapes only: their init is a
    no-op); buffers are created as the module's code creates them. Finish with :func:`materialize`."""
    import torch

    register = torch.nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None and not param.is_meta:
            param = torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _random_init(name: str, shape: tuple[int, ...], device: Any, dtype: Any, seed: int) -> Any:
    """Deterministic in (``seed``, ``name``): matrices and kernels N(0, 1/fan_in) (activations keep their
    scale), biases 0, 1-D ``weight``s (norm scales) 1, anything else N(0, 0.02^2)."""
    import zlib

    import torch

    tensor = torch.empty(shape, device=device, dtype=dtype)
    # one 32-bit seed from both (the CPU generator, a Mersenne twister, uses only 32 bits of a seed)
    generator = torch.Generator(device=tensor.device).manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
    leaf = name.rsplit(".", 1)[-1]
    if tensor.dim() >= 2:
        return tensor.normal_(0.0, (tensor.numel() // shape[0]) ** -0.5, generator=generator)
    if leaf == "bias":
        return tensor.zero_()
    if tensor.dim() == 1 and leaf == "weight":
        return tensor.fill_(1.0)
    return tensor.normal_(0.0, 0.02, generator=generator)


def materialize(module: Any, device: Any = "cpu", dtype: Any = None, seed: int = 0) -> Any:
    """Give every parameter of ``module`` still on the meta device a real value on ``device`` (in
    ``dtype``, default float32) from a cheap deterministic init (:func:`_random_init`, per parameter
    name, so independent of the order); a parameter shared by several modules stays shared. Buffers
    move to ``device``. ``device="meta"`` leaves the module as it is (shapes only). Returns ``module``."""
    import torch

    device = torch.device(device)
    if device.type == "meta":
        return module
    dtype = dtype or torch.float32
    made: dict[int, Any] = {}
    for prefix, sub in module.named_modules():
        for name, param in list(sub._parameters.items()):
            if param is None or not param.is_meta:
                continue
            if id(param) not in made:
                full = f"{prefix}.{name}" if prefix else name
                value = _random_init(full, tuple(param.shape), device, dtype, seed)
                made[id(param)] = torch.nn.Parameter(value, requires_grad=param.requires_grad)
            sub._parameters[name] = made[id(param)]
    left = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    if left:  # a buffer the module computed from a parameter while it was on the meta device
        raise RuntimeError(f"still on the meta device after materialize: {', '.join(left[:5])}")
    return module.to(device)


def sd_vae(config: dict[str, Any] | None = None) -> Any:
    """diffusers' ``AutoencoderKL`` at ``config`` (default the SD-1.x VAE, :data:`SD_VAE_CONFIG`)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(config or SD_VAE_CONFIG))


def clip_text_encoder(config: dict[str, Any] | None = None) -> Any:
    """transformers' ``CLIPTextModel`` at ``config`` (default CLIP ViT-L/14's text tower,
    :data:`CLIP_VIT_L14_TEXT_CONFIG`); pair it with :func:`tiny_clip_tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**(config or CLIP_VIT_L14_TEXT_CONFIG)))
