"""Loading AnimateDiff as users download it.

Base model (SD-1.5 family): a diffusers folder, a hub id, or a single-file LDM checkpoint
(``.safetensors``/``.ckpt``, e.g. community bases such as RealisticVision). Motion adapter: a
diffusers ``MotionAdapter`` folder or hub id, or an original motion-module file
(``mm_sd_v15_v2.ckpt`` / ``v3_sd15_mm.ckpt``), whose configuration is read off its keys and shapes.
The original layout is AnimateDiff's motion module (github.com/guoyww/AnimateDiff,
``animatediff/models/motion_module.py``); its mapping to diffusers is diffusers'
``scripts/convert_animatediff_motion_module_to_diffusers.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

from mpcore.backbones import ModelNotFoundError, diffusers_dtype_argument, hub_error, looks_local, quiet_diffusers
from mpcore.io.weights import CHECKPOINT_SUFFIXES, CheckpointMismatchError, read_state_dict, shapes, state_dict_diff

# AnimateDiff's own DDIM settings (animate.py: linear betas, leading spacing + offset 1,
# set_alpha_to_one True, no clipping); used when the base model brings no scheduler config.
ANIMATEDIFF_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False, set_alpha_to_one=True
)
MOTION_HEADS = 8  # every SD-1.5 motion module: 8 heads, dim_head = C / 8
MOTION_NORM_GROUPS = 32
DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
DTYPE_ARGUMENT = diffusers_dtype_argument()


def check_source(name: str, what: str, flag: str) -> None:
    """Fail early, before any model loads, when a local path is missing or is not a model: say what
    was found there and what was expected (cheap: a folder's listing, a safetensors header)."""
    path = Path(name).expanduser()
    if not looks_local(name):
        return  # a hub id
    expected = (f"Pass {flag} with a diffusers folder, a single-file checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) "
                "or a Hugging Face hub id.")
    if not path.exists():
        raise ModelNotFoundError(f"{what} not found at {path}. {expected}")
    if path.is_dir():
        index = path / ("model_index.json" if (path / "model_index.json").exists() else "config.json")
        if not index.is_file():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise ModelNotFoundError(f"{what} {path} is not a diffusers folder: it has no model_index.json or "
                                     f"config.json (found: {found}). {expected}")
        if index.name == "model_index.json":
            import json

            try:
                components = json.loads(index.read_text())
            except ValueError as error:
                raise ModelNotFoundError(f"{what} {index} is not valid JSON ({error})") from None
            missing = [key for key, value in components.items()
                       if not key.startswith("_") and isinstance(value, list) and value[0] and not (path / key).is_dir()]
            if missing:
                raise ModelNotFoundError(f"{what} {path} lacks the component folder(s) {', '.join(missing)} that its "
                                         "model_index.json lists (an incomplete download?). " + expected)
        return
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelNotFoundError(f"{what} {path} is a {path.suffix or 'suffix-less'} file, not a model. {expected}")
    if path.stat().st_size == 0:
        raise ModelNotFoundError(f"{what} {path} is an empty file. {expected}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # SafetensorError: a truncated or corrupt file
            raise ModelNotFoundError(f"{what} {path} is not a readable .safetensors file ({error}); a download "
                                     "cut short? Download it again.") from None


# ----------------------------------------------------------------------------- motion adapter


def motion_adapter_config_from_keys(state: dict[str, torch.Tensor]) -> dict:
    """Read a MotionAdapter configuration off an original motion-module state dict (the key
    layout of AnimateDiff's motion_module.py; adapter settings as diffusers' conversion script sets them)."""
    prefix = "down_blocks.{}.motion_modules.{}.temporal_transformer.norm.weight"
    channels = []
    while prefix.format(len(channels), 0) in state:
        channels.append(state[prefix.format(len(channels), 0)].shape[0])
    if not channels:
        raise CheckpointMismatchError(
            "no 'down_blocks.0.motion_modules.0.temporal_transformer.*' keys: not an AnimateDiff motion-module file"
        )
    layers = 0
    while prefix.format(0, layers) in state:
        layers += 1
    pe = [v for k, v in state.items() if k.endswith("pos_encoder.pe")]
    return dict(
        block_out_channels=tuple(channels),
        motion_layers_per_block=layers,
        motion_num_attention_heads=MOTION_HEADS,
        motion_norm_num_groups=MOTION_NORM_GROUPS,
        motion_max_seq_length=pe[0].shape[1] if pe else 32,
        # v2 has a mid-block motion module, v3 does not (motion_module_mid_block in inference-v2/-v3.yaml)
        use_motion_mid_block="mid_block.motion_modules.0.temporal_transformer.norm.bias" in state,
    )


def load_original_motion_module(path: str | Path, dtype: torch.dtype = torch.float32) -> MotionAdapter:
    """A MotionAdapter from an original AnimateDiff motion-module file, strictly.

    Stored ``pos_encoder.pe`` buffers are dropped: diffusers recomputes the same sinusoids as
    ``pos_embed.pe``; every other key must match in name and shape.
    """
    state = {k: v for k, v in read_state_dict(path).items() if "motion_modules." in k}
    adapter = MotionAdapter(**motion_adapter_config_from_keys(state))
    converted = convert_animatediff_checkpoint_to_diffusers(state)
    expected = {k: v for k, v in shapes(adapter.state_dict()).items() if not k.endswith("pos_embed.pe")}
    diff = state_dict_diff(expected, shapes(converted))
    if diff:
        raise CheckpointMismatchError(f"motion module {path} does not match the inferred MotionAdapter:\n{diff}")
    adapter.load_state_dict(converted, strict=False)
    with quiet_diffusers():  # ModelMixin.to(dtype) logs the "should be kept in float32: []" notice
        return adapter.to(dtype)


def load_motion_adapter(source: str, dtype: torch.dtype) -> MotionAdapter:
    path = Path(source).expanduser()
    if path.is_file():
        return load_original_motion_module(path, dtype)
    try:
        return MotionAdapter.from_pretrained(str(path) if path.exists() else source, **{DTYPE_ARGUMENT: dtype})
    except OSError as error:
        raise hub_error(source, "motion adapter", error) from error


# ----------------------------------------------------------------------------- base model


def load_pipeline(
    model: str, motion_adapter: str, dtype: torch.dtype, base_config: str | None = None
) -> tuple[AnimateDiffPipeline, dict]:
    """The diffusers AnimateDiff pipeline and the DDIM scheduler config to sample with.

    Building the pipeline casts its new ``UNetMotionModel`` with ``to(unet.dtype)`` (diffusers'
    ``UNetMotionModel.from_unet2d``), which logs "There are modules in UNetMotionModel that should be kept in
    float32: []" on every load: that one notice is dropped here (:func:`mpcore.backbones.quiet_diffusers`)."""
    adapter = load_motion_adapter(motion_adapter, dtype)
    path = Path(model).expanduser()
    try:
        if path.is_file():
            kwargs = {"config": base_config} if base_config else {}
            with quiet_diffusers():
                pipe = AnimateDiffPipeline.from_single_file(str(path), motion_adapter=adapter,
                                                            **{DTYPE_ARGUMENT: dtype}, **kwargs)
            scheduler_config = dict(DDIMScheduler(**ANIMATEDIFF_SCHEDULER).config)
        else:
            with quiet_diffusers():
                pipe = AnimateDiffPipeline.from_pretrained(
                    str(path) if path.exists() else model, motion_adapter=adapter, **{DTYPE_ARGUMENT: dtype}
                )
            # the base model's scheduler config, read as DDIM
            scheduler_config = dict(DDIMScheduler.from_config(pipe.scheduler.config).config)
    except OSError as error:
        raise hub_error(model, "base model", error) from error
    return pipe, scheduler_config
