"""The three terms of the MotionPrompt objective, each a pure function: tensors in, scalar tensor out.

MotionPrompt (Nam et al., "Optical-Flow Guided Prompt Optimization for Coherent Video Generation",
CVPR 2025) optimizes the learnable token embeddings e_S at each guided sampling step against

    L(e_S) = l_disc * L_disc(flow) + l_tv * L_TV(flow) + l_reg * L_reg(e_S)

where ``flow`` is the optical flow of the decoded frame pairs of the clean-video estimate made with
the guided prompt P + S (docs/design.md, "The method", step 2). :meth:`mpcore.motionprompt.MotionPrompt.objective`
computes ``flow`` and the weighted sum; this module holds the three terms, each stated as the
formula it computes (the statement of the paper's objective in docs/design.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mpcore_kernels import flow_tv_loss


def adversarial(logits: torch.Tensor) -> torch.Tensor:
    """L_disc = mean over pairs of softplus(-D(flow)) = -log sigmoid(D(flow)), in float32.

    The generator side of the non-saturating GAN loss (Goodfellow et al. 2014): ``logits`` are the
    discriminator's verdicts D(flow) on the flow of each decoded frame pair, higher = more real, so
    the term falls as D calls the flow real (d L_disc / d D = -sigmoid(-D) / n < 0).
    """
    return F.softplus(-logits.float()).mean()


def total_variation(flow: torch.Tensor) -> torch.Tensor:
    """L_TV = anisotropic total variation of ``flow`` (n, 2, H, W), mean over pairs and pixels.

    sum_c sum_{i,j} |f[c, i+1, j] - f[c, i, j]| + |f[c, i, j+1] - f[c, i, j]|, summed over the two
    flow channels and divided by n * H * W: 0 for a constant flow, larger for a rougher one. Computed
    by the ``flow_tv`` kernel through its dispatch (:func:`mpcore_kernels.flow_tv_loss`: Triton on
    CUDA, the torch reference otherwise).
    """
    return flow_tv_loss(flow, reduction="mean")


def token_regularizer(tokens: torch.Tensor, init_tokens: torch.Tensor) -> torch.Tensor:
    """L_reg = ||e_S - e_S_init||^2, the squared L2 distance of the learnable token rows (S, d) to
    their init word embeddings, summed over tokens and dimensions: keeps the tokens near the text
    embedding space (d L_reg / d e_S = 2 (e_S - e_S_init) points away from the init)."""
    return (tokens - init_tokens).pow(2).sum()
