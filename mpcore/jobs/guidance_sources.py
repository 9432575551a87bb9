"""Where a guidance's parts come from, checked without loading them: its flow estimator (``--flow``, the
discriminator's ``trained_on``, the config), its discriminator file and the tiny decoder of the guided
frames (:func:`mpcore.jobs.guidance.plan_guidance` calls these for what the spec ``needs``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mpcore import plugins
from mpcore.config import parse_override
from mpcore.interfaces import TINY_MODEL
from mpcore.io.console import echo
from mpcore.jobs.options import OptionError, parse_scalar
from mpcore.jobs.trained_on import read_trained_on

TINY_DECODER_HOW = ("Pass -o guidance_decoder_path=FOLDER (a diffusers AutoencoderTiny folder of the model's latent "
                    "space, e.g. TAESD for SD-family models: `hf download madebyollin/taesd --local-dir taesd`) or a hub "
                    "id, or use -o guidance_decoder=full (the backbone's VAE).")



def plugin_spec(kind: str, name: str, flag: str):
    """A plugin's spec; an unknown name is a bad option (exit 2) listing the installed ones."""
    try:
        return plugins.get(kind, name).spec
    except plugins.UnknownPluginError as error:
        raise OptionError(str(error), flag) from None


def plan_flow(plan, model: str | None, flow: str | None, flow_weights: str | None,
               flow_options: dict[str, Any], settings) -> None:
    """The flow estimator: ``--flow``, else ``-o flow_estimator``, else the discriminator's ``trained_on``
    estimator (said in a note), else the config's default (the weight-free tvl1 for the tiny model)."""
    config = plan.config
    set_by_user = flow is not None or "flow_estimator" in (settings if isinstance(settings, dict) else
                                                          dict(map(parse_override, settings)))
    trained = (plan.trained_on or {}).get("flow_estimator")
    if flow is not None:
        config.flow_estimator = flow
    elif not set_by_user and trained is not None:
        if trained != config.flow_estimator:
            echo(f"note: flows are computed with {trained!r}, the estimator the discriminator {plan.discriminator} "
                 "was trained on (its trained_on); --flow NAME overrides it")
        config.flow_estimator = trained
    elif not set_by_user and model == TINY_MODEL:
        config.flow_estimator = "tvl1"
    plan.flow_spec = plugin_spec("flow", config.flow_estimator, "--flow")
    declared = plan.flow_spec.options
    unknown = sorted(set(flow_options) - set(declared)) if declared is not None else []
    if unknown:
        raise OptionError(f"unknown option(s) of the {plan.flow_spec.name} flow estimator: {', '.join(unknown)}; "
                          f"it takes: {', '.join(declared) or 'none'}", "--flow-option")
    plan.flow_options = {k: parse_scalar(v) for k, v in flow_options.items()}
    # the tiny model's flow: the weight-free estimator, or RAFT at random init when asked for by name
    plan.flow_weights = flow_weights or ("random" if model == TINY_MODEL and config.flow_estimator == "raft" else None)


def plan_discriminator(plan, backbone_spec, model: str | None, discriminator: str | None,
                        disc_type: str | None) -> None:
    """The discriminator file (``--discriminator``, else one shipped for the model, else random for the tiny
    model) and its config's ``trained_on``, read without loading it."""
    bundled = backbone_spec.default_discriminator(model) if backbone_spec.default_discriminator is not None else None
    discriminator = discriminator or bundled or ("random" if model == TINY_MODEL else None)
    if discriminator is None:
        raise OptionError(
            f"the {plan.name} guidance needs a trained flow discriminator: pass --discriminator PATH.safetensors "
            "(its config JSON beside it; `mpcore disc recipe` trains one for a backbone), or --guidance none for the "
            f"plain baseline (--discriminator random only makes sense with --model {TINY_MODEL}).", "--discriminator")
    if discriminator != "random":
        disc_path = Path(discriminator).expanduser()
        if not disc_path.is_file():
            raise OptionError(f"discriminator file not found: {disc_path}", "--discriminator")
        config_path = disc_path.with_suffix(".json")
        if config_path.is_file():  # read here, cheaply: what it was trained on is checked before any load
            config = json.loads(config_path.read_text())
            if isinstance(config, dict):
                disc_type = disc_type or config.get("type")
                plan.trained_on = read_trained_on(config.get("trained_on"), str(config_path))
    plan.disc_spec = plugin_spec("discriminator", disc_type or "vit", "--discriminator-type")
    if discriminator == "random" and plan.disc_spec.random is None:
        raise OptionError(f"discriminator plugin {plan.disc_spec.name!r} cannot build a random discriminator",
                          "--discriminator")
    plan.discriminator = discriminator


def tiny_decoder_source(backbone_spec, model: str | None, config: Any) -> tuple[str, str]:
    """With ``-o guidance_decoder=tiny``: the tiny decoder's folder or hub id and where it comes from
    (``-o guidance_decoder_path``, else the backbone's default for the model), a local folder checked
    without loading it."""
    from mpcore.vae import check_tiny_decoder

    if config.guidance_decoder_path is not None:
        path, source = config.guidance_decoder_path, "-o guidance_decoder_path"
    else:
        default = backbone_spec.default_guidance_decoder
        path = default(model) if default is not None else None
        source = f"the {backbone_spec.name} backbone's default for model {model!r}"
        if path is None:
            raise OptionError(f"-o guidance_decoder=tiny: the {backbone_spec.name} backbone has no default tiny decoder "
                              f"for model {model!r}. {TINY_DECODER_HOW}", "-o guidance_decoder_path")
    check_tiny_decoder(path, TINY_DECODER_HOW)
    return path, source
