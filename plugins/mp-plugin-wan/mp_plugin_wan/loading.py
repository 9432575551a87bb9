"""Loading Wan 2.1 text-to-video as users download it: a diffusers folder or a hub id.

The folder layout is the one ``WanPipeline.save_pretrained`` writes and the official
``Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers`` repositories ship: ``transformer/``
(``WanTransformer3DModel``, sharded safetensors), ``vae/`` (``AutoencoderKLWan``), ``text_encoder/``
(``UMT5EncoderModel``, UMT5-XXL's encoder), ``tokenizer/`` and ``scheduler/``. The scheduler is
instantiated from the folder's own ``scheduler_config.json`` (its ``_class_name``): the official folders
hold UniPC with flow sigmas, ``flow_shift`` 3.0 and ``prediction_type`` ``flow_prediction`` (as
diffusers' ``scripts/convert_wan_to_diffusers.py`` writes them), which is what ``WanPipeline`` samples
with when loaded from the folder.

Also here: the checkpoint key -> shape map of the transformer (``mpcore weights expected/check``),
built on the meta device from the released variants' configs or a given ``config.json``, and reading a
folder's (sharded) safetensors as shapes only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch

from mpcore.backbones import ModelNotFoundError, diffusers_dtype_argument, hub_error, looks_local
from mpcore.io.weights import CheckpointMismatchError

HUB_IDS = {"1.3B": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "14B": "Wan-AI/Wan2.1-T2V-14B-Diffusers"}
DEFAULT_MODEL = HUB_IDS["1.3B"]
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
HOW = (f"Pass --model with a Wan 2.1 diffusers folder (download one with `huggingface-cli download {DEFAULT_MODEL} "
       f"--local-dir wan2.1-t2v-1.3b`) or a hub id ({', '.join(HUB_IDS.values())}).")

# The transformer configs of the released text-to-video variants (transformer/config.json of the
# Diffusers folders, as diffusers' scripts/convert_wan_to_diffusers.py writes them; the official Wan
# repository's configs wan_t2v_1_3B.py / wan_t2v_14B.py give the same dims: 1536 = 12 x 128, 5120 = 40 x 128).
# Not checked against a downloaded config.json here (no hub): see the README.
_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
               freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
               added_kv_proj_dim=None, rope_max_seq_len=1024)
TRANSFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    "1.3B": dict(_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "14B": dict(_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40),
}
# The Wan 2.1 VAE (vae/config.json: AutoencoderKLWan's defaults: base_dim 96, z_dim 16, 4x temporal and
# 8x spatial compression) and UMT5-XXL's encoder (text_encoder/config.json of the Diffusers folders).
VAE_CONFIG: dict[str, Any] = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                  temperal_downsample=[False, True, True], dropout=0.0)
UMT5_XXL_CONFIG: dict[str, Any] = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                       num_heads=64, relative_attention_num_buckets=32,
                                       relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                                       is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
                                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# The scheduler of the official folders (scheduler/scheduler_config.json): UniPC on flow sigmas
FLOW_SCHEDULER: dict[str, Any] = dict(prediction_type="flow_prediction", use_flow_sigmas=True,
                                      num_train_timesteps=1000, flow_shift=3.0)

DIFFUSERS_DTYPE = diffusers_dtype_argument()


# ----------------------------------------------------------------------------- checks before loading


def check_source(model: str) -> None:
    """Fail early, before any weights load, when a local ``model`` is not a Wan diffusers folder: say
    where it looked and what is missing. A hub id is checked when it loads."""
    if not looks_local(model):
        return
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"Wan model folder not found at {folder}. {HOW}")
    missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
    if missing:
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
        raise ModelNotFoundError(f"{folder} is not a complete Wan diffusers folder: no {', '.join(m + '/' for m in missing)} "
                                 f"(found: {found}; an incomplete download?). {HOW}")
    config = folder / "scheduler" / "scheduler_config.json"
    if not config.is_file():
        raise ModelNotFoundError(f"{config} not found: the scheduler folder has no config. {HOW}")


def scheduler_from_config(config: dict[str, Any], where: str):
    """The scheduler class named by a ``scheduler_config.json`` (its ``_class_name``) and the config;
    refuses one that is not a flow-matching scheduler (Wan predicts the flow velocity)."""
    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ModelNotFoundError(f"{where}: unknown scheduler class {name!r} (diffusers {diffusers.__version__})")
    flow = config.get("prediction_type") == "flow_prediction" or name == "FlowMatchEulerDiscreteScheduler"
    if not flow:
        raise ModelNotFoundError(f"{where}: {name} with prediction_type {config.get('prediction_type')!r} is not a "
                                 "flow-matching scheduler; Wan's transformer predicts the flow velocity (the official "
                                 "folders hold UniPCMultistepScheduler with prediction_type 'flow_prediction')")
    return cls, dict(cls.from_config(config).config)


# ----------------------------------------------------------------------------- loading


def load_components(model: str, dtype: torch.dtype) -> dict[str, Any]:
    """The pipeline's components from a folder or hub id: the transformer and the text encoder in
    ``dtype``, the VAE in float32 (as diffusers' Wan examples load it: it decodes in float32), the
    tokenizer, and the scheduler instantiated from the folder's config. Also ``scheduler_class`` and
    ``scheduler_config``."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from mpcore.backbones import quiet_diffusers

    source = str(Path(model).expanduser()) if looks_local(model) else model
    try:
        with quiet_diffusers():
            scheduler_config = diffusers.UniPCMultistepScheduler.load_config(source, subfolder="scheduler")
            scheduler_class, scheduler_config = scheduler_from_config(scheduler_config, f"{model} scheduler")
            transformer = WanTransformer3DModel.from_pretrained(source, subfolder="transformer",
                                                                **{DIFFUSERS_DTYPE: dtype})
            vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", **{DIFFUSERS_DTYPE: torch.float32})
        text_encoder = UMT5EncoderModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
    except OSError as error:
        raise hub_error(model, "the Wan model", error, "--model") from error
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=scheduler_class.from_config(scheduler_config), scheduler_class=scheduler_class,
                scheduler_config=scheduler_config)


# ----------------------------------------------------------------------------- checkpoint keys


def transformer_config(variant: str | None = None, config: str | None = None) -> dict[str, Any]:
    """The transformer config of a released variant (``1.3B``, the default, or ``14B``) or of a
    ``config.json`` (a diffusers ``WanTransformer3DModel`` config, e.g. ``transformer/config.json``)."""
    if config is not None:
        if variant is not None:
            raise ValueError("give --variant or --config, not both")
        path = Path(config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"transformer config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
        if data.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
            raise ValueError(f"{path} is a {data.get('_class_name')} config, not a WanTransformer3DModel one "
                             "(pass the transformer/config.json of a Wan diffusers folder)")
        return {k: v for k, v in data.items() if not k.startswith("_")}
    name = variant or "1.3B"
    if name not in TRANSFORMER_CONFIGS:
        raise ValueError(f"unknown wan variant {name!r}; known: {', '.join(TRANSFORMER_CONFIGS)} (or --config "
                         "transformer/config.json)")
    return dict(TRANSFORMER_CONFIGS[name])


def expected_keys(variant: str | None = None, config: str | None = None) -> dict[str, tuple[int, ...]]:
    """``BackboneSpec.expected_keys`` of ``wan``: the transformer checkpoint's key -> shape map (the
    ``transformer/diffusion_pytorch_model*.safetensors`` of a Diffusers folder), built on the meta
    device (nothing allocated)."""
    from diffusers import WanTransformer3DModel

    from mpcore.backbones import quiet_diffusers

    with torch.device("meta"), quiet_diffusers():
        transformer = WanTransformer3DModel(**transformer_config(variant, config))
    return {k: tuple(v.shape) for k, v in transformer.state_dict().items()}


SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"


def safetensors_files(path: str | Path) -> list[Path]:
    """The safetensors files of a transformer checkpoint: the file itself, the shards an
    ``*.safetensors.index.json`` lists, or those of a folder (a model folder's ``transformer/``, or a
    transformer folder itself: its index, else its single ``diffusion_pytorch_model.safetensors``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        for candidate in (folder / SAFETENSORS_INDEX, folder / "diffusion_pytorch_model.safetensors"):
            if candidate.is_file():
                return safetensors_files(candidate)
        raise FileNotFoundError(f"no {SAFETENSORS_INDEX} or diffusion_pytorch_model.safetensors in {folder}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointMismatchError(f"{path} is not a safetensors index (no weight_map: {error})") from None
        shards = [path.parent / name for name in dict.fromkeys(weight_map.values())]
        absent = [str(s) for s in shards if not s.is_file()]
        if absent:
            raise FileNotFoundError(f"shard(s) listed in {path} not found: {', '.join(absent)} (an incomplete download?)")
        return shards
    if path.suffix != ".safetensors":
        raise CheckpointMismatchError(f"{path}: pass the transformer's .safetensors file or its {SAFETENSORS_INDEX}")
    return [path]


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """``BackboneSpec.read_weights`` of ``wan``: every tensor of a (sharded) transformer checkpoint as a
    meta tensor of its shape and dtype, read from the safetensors headers only (checking a 28 GB 14B
    checkpoint reads no weights)."""
    from safetensors import safe_open

    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
    tensors: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    view = handle.get_slice(key)
                    tensors[key] = torch.empty(view.get_shape(), dtype=dtypes.get(view.get_dtype(), torch.float32),
                                               device="meta")
        except Exception as error:  # SafetensorError: truncated or not a safetensors file
            raise CheckpointMismatchError(f"{file} is not a readable .safetensors file ({error}); a download cut "
                                          "short?") from None
    return tensors
