"""Loading CogVideoX as users download it: a diffusers folder or hub id (``THUDM/CogVideoX-2b``,
``THUDM/CogVideoX-5b``) with the subfolders ``transformer``, ``vae``, ``text_encoder``, ``tokenizer``
and ``scheduler``, each loaded with ``from_pretrained`` as ``CogVideoXPipeline.from_pretrained`` loads it.

Facts of the released models (the architecture keys below), and where they come from:

* diffusers' converter ``scripts/convert_cogvideox_to_diffusers.py``: 2b has 30 layers, 30 heads, no
  rotary embeddings, VAE scaling factor 1.15258426; 5b has 42 layers, 48 heads, rotary embeddings,
  VAE scaling factor 0.7; text encoder ``google/t5-v1_1-xxl`` with 226 tokens; the scheduler
  settings (scaled_linear 0.00085..0.012, v_prediction, zero-terminal-SNR rescale, snr_shift_scale 3,
  trailing spacing, set_alpha_to_one, no clipping) -- the same as the 2b folder's
  ``scheduler/scheduler_config.json`` (``CogVideoXDDIMScheduler``) on the hub;
* every other transformer / VAE setting is the default of diffusers' ``CogVideoXTransformer3DModel``
  / ``AutoencoderKLCogVideoX`` (the converter builds the models with those defaults);
* the 5b folder ships ``CogVideoXDPMScheduler`` (CogVideo's own advice: DDIM for 2b, DPM for 5b).
  Its exact ``snr_shift_scale`` was not verifiable here (no hub access): loading always reads the
  folder's own ``scheduler_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch

from mpcore.backbones import ModelNotFoundError, diffusers_dtype_argument, hub_error, looks_local

DEFAULT_MODEL = "THUDM/CogVideoX-2b"
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULERS = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")
DTYPE_ARGUMENT = diffusers_dtype_argument()
HOW = ("Pass --model with a CogVideoX diffusers folder (e.g. `huggingface-cli download THUDM/CogVideoX-2b "
       "--local-dir CogVideoX-2b`, then --model CogVideoX-2b) or a hub id (THUDM/CogVideoX-2b, THUDM/CogVideoX-5b).")

COGVIDEOX_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction", timestep_spacing="trailing",
    rescale_betas_zero_snr=True, snr_shift_scale=3.0,
)
# transformer/config.json of the released text-to-video models (see the module's doc)
TRANSFORMER_2B: dict[str, Any] = dict(
    num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True, freq_shift=0,
    time_embed_dim=512, text_embed_dim=4096, num_layers=30, dropout=0.0, attention_bias=True, sample_width=90,
    sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
    activation_fn="gelu-approximate", timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5,
    spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=False,
    use_learned_positional_embeddings=False,
)
TRANSFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    "2b": TRANSFORMER_2B,
    "5b": dict(TRANSFORMER_2B, num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True),
}
VAE_SCALING_FACTOR = {"2b": 1.15258426, "5b": 0.7}
# google/t5-v1_1-xxl's encoder (text_encoder/config.json of both folders): 4.76B parameters
T5_V11_XXL: dict[str, Any] = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
)


# ----------------------------------------------------------------------------- checks before loading


def check_source(name: str) -> None:
    """Fail early, before any weights load, when a local ``--model`` is missing or is not a CogVideoX
    diffusers folder (cheap: the folder's listing)."""
    if not looks_local(name):
        return  # a hub id
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"CogVideoX model not found at {path}. {HOW}")
    if not path.is_dir():
        raise ModelNotFoundError(f"CogVideoX model {path} is a file; CogVideoX loads from a diffusers folder. {HOW}")
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
        raise ModelNotFoundError(f"CogVideoX folder {path} lacks the component folder(s) {', '.join(missing)} "
                                 f"(found: {found}); an incomplete download? {HOW}")
    scheduler_class(path / "scheduler")  # a scheduler mpcore can step


def scheduler_class(folder: Path) -> str:
    """The class name in ``folder/scheduler_config.json`` (:func:`checked_scheduler_name`)."""
    config = folder / "scheduler_config.json"
    if not config.is_file():
        raise ModelNotFoundError(f"no scheduler_config.json in {folder}. {HOW}")
    try:
        values = json.loads(config.read_text())
    except ValueError as error:
        raise ModelNotFoundError(f"{config} is not valid JSON ({error})") from None
    return checked_scheduler_name(values, str(config))


def checked_scheduler_name(config: dict[str, Any], where: str) -> str:
    """The scheduler class a config names: one of :data:`SCHEDULERS`, else a clear error."""
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise ModelNotFoundError(f"{where} names the scheduler {name}; the cogvideox backbone steps with "
                                 f"{' or '.join(SCHEDULERS)} (as the released folders ship them)")
    return name


# ----------------------------------------------------------------------------- loading


def load_components(model: str, dtype: torch.dtype) -> dict[str, Any]:
    """The five components of a CogVideoX folder or hub id, in ``dtype`` (the tokenizer and scheduler
    as saved). The scheduler is the class the folder names (:func:`scheduler_class`)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    path = Path(model).expanduser()
    source = str(path) if path.exists() else model
    kind = {DTYPE_ARGUMENT: dtype}
    try:
        scheduler_config = diffusers.CogVideoXDDIMScheduler.load_config(source, subfolder="scheduler")
        name = checked_scheduler_name(scheduler_config, f"{model}/scheduler/scheduler_config.json")
        scheduler = getattr(diffusers, name).from_config(scheduler_config)
        parts = dict(
            transformer=CogVideoXTransformer3DModel.from_pretrained(source, subfolder="transformer", **kind),
            vae=AutoencoderKLCogVideoX.from_pretrained(source, subfolder="vae", **kind),
            text_encoder=T5EncoderModel.from_pretrained(source, subfolder="text_encoder", **kind),
            tokenizer=AutoTokenizer.from_pretrained(source, subfolder="tokenizer"),
            scheduler=scheduler,
        )
    except OSError as error:
        raise hub_error(model, "CogVideoX model", error, "--model") from error
    problem = unsupported_transformer(parts["transformer"])
    if problem:
        raise ModelNotFoundError(f"{model} {problem}")
    return parts


def unsupported_transformer(transformer) -> str | None:
    """Why ``transformer`` is not one the cogvideox backbone samples (CogVideoX 1.5's temporal patches), or None."""
    if transformer.config.patch_size_t is not None:
        return (f"is a CogVideoX 1.5 model (temporal patches, patch_size_t={transformer.config.patch_size_t}); the "
                "cogvideox backbone runs CogVideoX 1.0 text-to-video models (THUDM/CogVideoX-2b, THUDM/CogVideoX-5b)")
    return None


# ----------------------------------------------------------------------------- mpcore weights expected / check


def transformer_config(variant: str | None = None, config: str | None = None) -> dict[str, Any]:
    """The transformer config of a released variant (``2b``, default, or ``5b``) or of a config file
    (a ``transformer/config.json``, or a model folder holding one)."""
    if config is not None:
        path = Path(config).expanduser()
        if path.is_dir():
            path = path / "transformer" / "config.json" if (path / "transformer").is_dir() else path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"transformer config not found at {path}: pass a CogVideoX transformer/config.json")
        try:
            values = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
        if values.get("_class_name") not in (None, "CogVideoXTransformer3DModel"):
            raise ValueError(f"{path} configures {values['_class_name']}, not CogVideoXTransformer3DModel")
        return {k: v for k, v in values.items() if not k.startswith("_")}
    variant = variant or "2b"
    if variant not in TRANSFORMER_CONFIGS:
        raise ValueError(f"unknown CogVideoX variant {variant!r}; known: {', '.join(TRANSFORMER_CONFIGS)}")
    return dict(TRANSFORMER_CONFIGS[variant])


def expected_keys(variant: str | None = None, config: str | None = None) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the transformer's checkpoint (``transformer/diffusion_pytorch_model*.safetensors``),
    built on the meta device from :func:`transformer_config` (nothing allocated)."""
    from diffusers import CogVideoXTransformer3DModel

    from mpcore.backbones import parameters_on_meta

    with parameters_on_meta():
        model = CogVideoXTransformer3DModel(**transformer_config(variant, config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def safetensors_files(path: str | Path) -> list[Path]:
    """The safetensors files of a transformer checkpoint: a ``.safetensors`` file; an
    ``*.safetensors.index.json`` (its shards); or a folder (a model folder's ``transformer/``, or a
    transformer folder) holding either."""
    path = Path(path).expanduser()
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        indexes = sorted(folder.glob("*.safetensors.index.json"))
        files = indexes or sorted(folder.glob("*.safetensors"))
        if len(files) != 1:
            raise FileNotFoundError(f"expected one diffusion_pytorch_model(.safetensors | .safetensors.index.json) in "
                                    f"{folder}, found {len(files)}")
        path = files[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as error:
            raise RuntimeError(f"{path} is not a safetensors index (no weight_map: {error!r})") from None
        return [path.parent / shard for shard in shards]
    if path.suffix != ".safetensors":
        raise RuntimeError(f"{path}: CogVideoX checkpoints are .safetensors files (or their .index.json)")
    return [path]


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The transformer checkpoint's tensors as meta tensors of the stored shapes and dtypes (read from
    the safetensors headers only, so checking a 10 GB download takes a moment), for ``mpcore weights
    check``; ``path`` as :func:`safetensors_files` takes it."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        if not file.is_file():
            raise FileNotFoundError(f"shard {file.name} listed in the index is missing from {file.parent}")
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                sliced = handle.get_slice(key)
                dtype = getattr(torch, {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(
                    sliced.get_dtype(), "float32"))
                state[key] = torch.empty(sliced.get_shape(), dtype=dtype, device="meta")
    return state
