"""The reserved model name ``toy``: a small trained AnimateDiff-architecture model, shipped as package data.

Trained on this repository's procedural world (:mod:`mpcore.toy.world`: one coloured shape moving
over a textured background, 32x32 pixels, 8 frames) by ``scripts/train_toy.py``, on a CPU. Same
contracts as the real AnimateDiff: an SD-1.5-layout diffusers folder (``toy/base``: UNet with text
cross-attention, AutoencoderKL with 4x down-sampling, CLIP text encoder with CLIP's full
49408-token vocabulary) plus a ``MotionAdapter`` folder (``toy/motion_adapter``), loaded through the
same code path as downloaded models. ``toy/discriminator.safetensors`` (+ ``.json``) is its flow
discriminator, trained by ``mpcore disc train`` on TV-L1 flows of real procedural clips versus the
model's own videos (``scripts/train_toy_disc.sh``). ``toy/tiny_decoder`` is a diffusers AutoencoderTiny
distilled from its VAE (``scripts/distill_tiny_decoder.py``): ``-o guidance_decoder=tiny``'s default here.

``mpcore run --prompt "a red circle moving right over a striped background"`` (no backbone, no
model) uses it; see ``toy/MODEL_CARD.md`` for what it was trained on and how well it does.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mp_plugin_animatediff import PAPER_MOTIONPROMPT_DEFAULTS

TOY_MODEL = "toy"

TOY_SAMPLER_DEFAULTS = dict(frames=8, height=32, width=32, steps=25, cfg_scale=7.5)

# AnimateDiff's paper defaults, with the weight-free TV-L1 estimator (RAFT's weights cannot ship) in
# its small-frame setting (the bundled discriminator was trained on flows of the same estimator), and
# the estimate and range that `mpcore diagnose steps` chose for this model
# (benchmarks/results/diagnose_toy: scripts/diagnose_toy.py): the one-step Tweedie estimate keeps
# little motion and the discriminator cannot tell real clips' estimates from the model's own before
# step 20 of 25 (AUC <= 0.59); a 3-call rollout keeps more and separates from step 14 (AUC 0.64-0.77).
# The range is given at the paper's 50 steps, (28, 40), so that it scales: [14, 20) at the toy's 25.
TOY_MOTIONPROMPT_DEFAULTS = dict(PAPER_MOTIONPROMPT_DEFAULTS, flow_estimator="tvl1_fast", estimate="rollout",
                                 rollout_steps=3, reference_opt_range=(28, 40))


def toy_folder() -> Path:
    return Path(str(resources.files("mp_plugin_animatediff") / "toy"))


def toy_paths() -> dict[str, Path]:
    folder = toy_folder()
    return {
        "base": folder / "base",
        "motion_adapter": folder / "motion_adapter",
        "discriminator": folder / "discriminator.safetensors",
        "tiny_decoder": folder / "tiny_decoder",
    }


def check_installed() -> None:
    """The model's package data is there (a partial install fails clearly). The discriminator is
    checked only when guidance needs it (by the runner, like any ``--discriminator`` file)."""
    paths = toy_paths()
    missing = [str(paths[name]) for name in ("base", "motion_adapter") if not paths[name].exists()]
    if missing:
        raise FileNotFoundError(
            "the bundled toy model is missing from this installation (looked for: " + ", ".join(missing) + "). "
            "Reinstall mp-plugin-animatediff, or retrain it with scripts/train_toy.py."
        )
