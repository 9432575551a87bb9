"""Backbones: chosen and checked by name before anything loads (:func:`check_backbone`), loaded
(:func:`load_backbone`) or wrapped around a diffusers pipeline the caller already has
(:func:`wrap_pipeline`). Every loaded backbone records its :class:`mpcore.interfaces.BackboneOrigin`."""

from __future__ import annotations

import time
from typing import Any

from mpcore import plugins
from mpcore.interfaces import DEFAULT_BACKBONE, DEFAULT_MODEL, TINY_MODEL, BackboneOrigin
from mpcore.io.console import echo
from mpcore.jobs.options import RANDOM_INIT_SEED, OptionError


def check_backbone(name: str | None, model: str | None, options: dict[str, Any]) -> tuple[Any, str | None]:
    """(spec, model) for ``name`` and ``model``: neither given, the bundled toy model (said in a note);
    ``options`` checked to be the backbone's own, then the plugin's cheap ``check``. Loads nothing."""
    if name is None:
        name = DEFAULT_BACKBONE
        if model is None:
            model = DEFAULT_MODEL
            echo(f"note: no --backbone/--model given: using the bundled '{DEFAULT_MODEL}' model ({DEFAULT_BACKBONE} "
                 "architecture, 32x32 px, trained offline on procedural clips). For the real AnimateDiff pass "
                 f"--backbone {DEFAULT_BACKBONE}.")
    try:
        spec = plugins.get("backbone", name).spec
    except plugins.UnknownPluginError as error:
        raise OptionError(str(error), "--backbone") from None
    own = {option.name for option in spec.options}
    for key in options:
        if key not in own:
            owners = [other for other, item in plugins.registry("backbone").items()
                      if key in {option.name for option in item.spec.options}]
            flag = "--" + key.replace("_", "-")
            where = f"an option of backbone(s) {', '.join(owners)}" if owners else "no backbone's option"
            raise OptionError(f"{flag} is {where}, not {name}'s (it takes: "
                              f"{', '.join('--' + o.replace('_', '-') for o in sorted(own)) or 'none'})", flag)
    if spec.check is not None:
        spec.check(model=model, **options)
    return spec, model


def load_backbone(name: str | None = None, model: str | None = None, *, device: str | None = None,
                  dtype: str = "auto", offload: bool = False, attention: str = "auto", progress: bool = True,
                  **options: Any):
    """Load a backbone by plugin name, as ``mpcore run --backbone NAME --model MODEL`` does.

    ``model``: a hub id, folder or file; ``"tiny"`` a tiny random-init model (offline; its output is
    noise); neither name nor model: the bundled toy model. ``device`` None: cuda if available, else cpu;
    ``dtype`` 'auto' (the backbone's own on CUDA, float32 on CPU), 'float32', 'float16' or 'bfloat16';
    ``options`` the plugin's own (e.g. ``motion_adapter=`` for animatediff). Raises
    :class:`mpcore.OptionError` naming the problem before anything loads."""
    from mpcore.jobs.options import resolve_device, resolve_dtype

    spec, model = check_backbone(name, model, options)
    resolved = resolve_device(device)
    return load_spec(spec, model, resolved, resolve_dtype(dtype, resolved, spec.cuda_dtype), offload=offload,
                     attention=attention, options=options, progress=progress)


def load_spec(spec, model: str | None, device, dtype, offload: bool = False, attention: str = "auto",
              options: dict[str, Any] | None = None, progress: bool = True):
    """Load the backbone of ``spec`` (its plugin's ``load``; everything checked) and record where it comes
    from (``backbone.origin``)."""
    if not progress:  # also hides the loaders' own bars (diffusers, transformers)
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    if model == TINY_MODEL:
        echo(f"note: --model {TINY_MODEL} is a tiny RANDOM-INIT model: its output is noise. It exists so the "
             "whole path runs offline; use real weights for real videos.")
    start = time.perf_counter()
    backbone = spec.load(model=model, device=device, dtype=dtype, seed=RANDOM_INIT_SEED, offload=offload,
                         attention=attention, **(options or {}))
    backbone.origin = BackboneOrigin(spec=spec, model=model, options=dict(options or {}),
                                     load_seconds=time.perf_counter() - start)
    return backbone


def wrap_pipeline(pipeline, name: str | None = None, **options: Any):
    """An mpcore backbone around a diffusers pipeline you already have (``AnimateDiffPipeline``,
    ``WanPipeline``, ``CogVideoXPipeline``): no reload, the pipeline's own modules on their device and dtype.
    The backbone plugin whose ``wraps`` names the pipeline's class (or ``name``) builds it.

    What changes on your pipeline (see the plugin's ``wrap`` for its own): its denoiser, VAE and text encoder
    are put in eval mode with ``requires_grad_(False)`` (``pipeline(...)`` runs them so too; undo with
    ``module.train()`` / ``requires_grad_(True)``); a guidance that learns tokens (MotionPrompt) adds them to
    the tokenizer and grows the text encoder's embedding table by their rows: prompts without them encode as
    before (the adapter also hooks the embedding layer's forward: a no-op outside mpcore's own encoding).
    Samples with the backbone's update rule on the pipeline scheduler's config (DDIM for
    AnimateDiff, as the paper)."""
    specs = {n: item.spec for n, item in plugins.registry("backbone").items() if item.spec.wrap is not None}
    classes = {cls.__name__ for cls in type(pipeline).__mro__}
    if name is not None:
        if name not in specs:
            raise OptionError(f"backbone {name!r} cannot wrap a pipeline; backbones that can: {', '.join(sorted(specs))}")
        spec = specs[name]
    else:
        matching = [spec for spec in specs.values() if classes & set(spec.wraps)]
        if not matching:
            known = ", ".join(f"{', '.join(s.wraps)} ({n})" for n, s in sorted(specs.items())) or "none installed"
            raise OptionError(f"no installed backbone wraps a {type(pipeline).__name__}; wrappable pipelines: {known}")
        spec = matching[0]
    model = getattr(getattr(pipeline, "config", None), "_name_or_path", None) or None
    backbone = spec.wrap(pipeline, **options)
    backbone.origin = BackboneOrigin(spec=spec, model=model, options=dict(options), wrapped=True)
    return backbone
