"""MotionPrompt guidance: optimize learnable prompt tokens against an optical-flow discriminator.

At each DDIM step i inside the optimization range (docs/design.md, "The method"):

1. encode P + S with the learnable rows -> c*, predict the output with CFG (the unconditional
   output is computed once per step, it does not depend on S);
2. estimate of the clean video x0_hat, for the selected frames only: the paper's one-step Tweedie
   estimate (:func:`mpcore_kernels.subset_tweedie`, fused with the gather and the VAE latent scale),
   or, with ``estimate='rollout'``, a short differentiable DDIM rollout ending in that estimate
   (:func:`estimate_clean_frames`);
3. pick adjacent frame pairs at seeded random positions and decode ONLY those frames (through the
   backbone's VAE, or with ``guidance_decoder='tiny'`` a cheaper decoder of the same latent space);
4. flow of each pair; loss = l_disc * mean softplus(-D(flow)) + l_tv * TV(flow) + l_reg * ||e_S - e_S_init||^2
   (softplus(-D) is the generator side of the non-saturating GAN loss; the three terms are the pure
   functions of :mod:`mpcore.losses`);
5. one optimizer step on the token rows; K times. Then the DDIM step uses the optimized c*.

Outside the range the plain prompt P (no learned token) is used. Only the learnable token tensor
requires grad: model parameters are frozen and get no gradients.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from mpcore_kernels import subset_tweedie

from mpcore import losses
from mpcore.config import RANDOM_INIT, ConfigError, MotionPromptConfig, SamplerConfig
from mpcore.interfaces import Backbone, Discriminator, FlowEstimator
from mpcore.sampling import StepCondition, cfg_output
from mpcore.schedules import NoiseSchedule

TOKEN_FORMAT = "<mp_{}>"
PROBE_SEED_OFFSET = 7919
"""The gate probe's frame pairs come from a generator seeded ``seed + PROBE_SEED_OFFSET``."""
RANDOM_INIT_SEED_OFFSET = 104729
"""Token k's random init (``init_words=random``) comes from a generator seeded ``seed + offset + k``."""


def rollout_indices(num_steps: int, step: int, calls: int) -> list[int]:
    """Sampling-step indices of the model calls of a ``calls``-step DDIM rollout from ``step``.

    The remaining ``num_steps - step`` steps of the trajectory are split into ``calls`` equal
    strides (DDIM with fewer steps over the same interval): ``calls = 1`` is the one-step estimate
    at ``step``; ``calls = num_steps - step`` is every remaining step, i.e. the sampler itself.
    """
    remaining = num_steps - step
    if remaining < 1 or calls < 1:
        raise ValueError(f"no rollout from step {step} of {num_steps} with {calls} calls")
    calls = min(calls, remaining)
    return [step + (k * remaining) // calls for k in range(calls)]


@dataclass
class CleanEstimate:
    """A clean-video estimate of selected frames (:func:`estimate_clean_frames`)."""

    frames: torch.Tensor
    """(B * len(frame_index), C, h, w) float32, VAE latent scale undone, ready to decode; differentiable
    w.r.t. the condition where grad is enabled."""
    output_at_t: torch.Tensor
    """The CFG model output of the estimate's first call, at the x and step it started from, detached (with
    ``step_output='last_iteration'`` the sampling step takes it instead of a fresh forward)."""


@dataclass
class RolloutStart:
    """Where a rollout's last call starts (``rollout_gradient='last_call'``): computed once per sampling step
    without gradient (:func:`rollout_to_last_call`)."""

    latents: torch.Tensor
    """x at the last call's noise level (no gradient)."""
    index: int
    """The last call's sampling-step index."""
    uncond_output: torch.Tensor | None
    """The unconditional output at (``latents``, its timestep); None without CFG."""


def rollout_condition(cond: torch.Tensor, index: int, plain_cond: torch.Tensor | None,
                      plain_from: int | None) -> torch.Tensor:
    """The condition of a rollout call at sampling step ``index``: ``plain_cond`` from ``plain_from`` on
    (``rollout_prompt='as_sampled'``), else ``cond``."""
    return plain_cond if plain_cond is not None and plain_from is not None and index >= plain_from else cond


def rollout_moves(backbone: Backbone, schedule: NoiseSchedule, latents: torch.Tensor, indices: list[int],
                  cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float, uncond_output: torch.Tensor | None = None,
                  plain_cond: torch.Tensor | None = None, plain_from: int | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The deterministic moves of a rollout along ``indices`` (:func:`rollout_indices`): from x at
    ``indices[0]``, a CFG call then the backbone's own :meth:`~mpcore.schedules.NoiseSchedule.transition`
    (DDIM with eta = 0, lvdm's scale schedule, or the flow ODE's Euler step) to each next index. Returns x at
    ``indices[-1]`` and the first call's output (None if there is no move); differentiable where grad is on."""
    timesteps = schedule.timesteps
    x, first_output = latents, None
    for k, index in enumerate(indices[:-1]):
        call_cond = rollout_condition(cond, index, plain_cond, plain_from)
        output = cfg_output(backbone, x, timesteps[index], call_cond, uncond, cfg_scale, uncond_output if k == 0 else None)
        if k == 0:
            first_output = output.detach()
        x = schedule.transition(x, output, index, indices[k + 1])
    return x, first_output


def estimate_clean_frames(
    backbone: Backbone,
    schedule: NoiseSchedule,
    latents: torch.Tensor,
    step: int,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    cfg_scale: float,
    frame_index: list[int],
    calls: int = 1,
    uncond_output: torch.Tensor | None = None,
    plain_cond: torch.Tensor | None = None,
    plain_from: int | None = None,
) -> CleanEstimate:
    """Clean-video estimate of the frames ``frame_index`` from x_t at sampling step ``step``.

    ``calls = 1``: the one-step Tweedie estimate x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (the
    v form for v-prediction, x_t - sigma_t v for flow matching), MotionPrompt's as published.
    ``calls = N > 1``: a rollout of N model calls along :func:`rollout_indices`: N - 1 deterministic
    moves to the next call's noise level (:func:`rollout_moves`), then the Tweedie estimate at the last
    one; differentiable end to end, so the gradient reaches ``cond`` through every call.
    ``plain_cond``/``plain_from``: calls at sampling steps >= ``plain_from`` condition on ``plain_cond``
    (the plain prompt the sampler will use after the optimization range) instead of ``cond``.
    The frames come from :func:`mpcore_kernels.subset_tweedie` (fused gather, VAE latent scale undone).
    ``uncond_output`` is the unconditional output at (x_t, t) if already computed (it is reused only for the
    first call: later calls see an x that depends on ``cond``).
    """
    indices = rollout_indices(len(schedule.timesteps), step, calls)
    x, first_output = rollout_moves(backbone, schedule, latents, indices, cond, uncond, cfg_scale, uncond_output,
                                    plain_cond, plain_from)
    last = indices[-1]
    output = cfg_output(backbone, x, schedule.timesteps[last], rollout_condition(cond, last, plain_cond, plain_from),
                        uncond, cfg_scale, uncond_output if len(indices) == 1 else None)
    # Tweedie x0 of the selected frames only -> (B * K, C, h, w), fp32, VAE latent scale undone
    frames = subset_tweedie(x, output, frame_index, prediction_type=backbone.prediction_type,
                            latent_scale=schedule.latent_scale(last), **schedule.tweedie_level(last))
    return CleanEstimate(frames=frames, output_at_t=output.detach() if first_output is None else first_output)


@torch.no_grad()
def rollout_to_last_call(backbone: Backbone, schedule: NoiseSchedule, latents: torch.Tensor, step: int,
                         cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float, calls: int,
                         uncond_output: torch.Tensor | None = None) -> RolloutStart:
    """``rollout_gradient='last_call'``: the moves of a ``calls``-call rollout from x_t at ``step``
    (:func:`rollout_moves`) without gradient, and the unconditional output where the last call starts (it
    no longer depends on the token, so the K updates share it)."""
    indices = rollout_indices(len(schedule.timesteps), step, calls)
    x, _ = rollout_moves(backbone, schedule, latents, indices, cond, uncond, cfg_scale, uncond_output)
    last = indices[-1]
    if len(indices) == 1:
        last_uncond = uncond_output
    else:
        last_uncond = backbone.predict(x, schedule.timesteps[last], uncond) if cfg_scale > 1.0 else None
    return RolloutStart(latents=x, index=last, uncond_output=last_uncond)


def select_frame_pairs(num_frames: int, num_pairs: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """``num_pairs`` disjoint adjacent pairs (f, f+1) at random positions among ``num_frames`` frames.

    The F - 2n unused frames are spread over the n + 1 gaps around the pairs uniformly at random
    (stars and bars), so every arrangement of disjoint pairs is possible.
    """
    if 2 * num_pairs > num_frames:
        raise ValueError(f"cannot place {num_pairs} disjoint frame pairs in {num_frames} frames")
    free = num_frames - 2 * num_pairs
    # choose which of the free + n slots are pairs: positions of n "bars" among free + n items
    slots = torch.randperm(free + num_pairs, generator=generator)[:num_pairs].sort().values.tolist()
    pairs = []
    for k, slot in enumerate(slots):
        start = slot + k  # each earlier pair occupies one extra frame
        pairs.append((start, start + 1))
    return pairs


def pair_flow(flow_estimator: FlowEstimator, images: torch.Tensor, flow_size: int | None = None) -> torch.Tensor:
    """Flow of each adjacent pair of decoded frames (a0, b0, a1, b1, ...) -> (n, 2, H, W) float32,
    the frames first resized to ``flow_size`` x ``flow_size`` if given."""
    if flow_size is not None:
        images = F.interpolate(images, size=(flow_size, flow_size), mode="bilinear", align_corners=False)
    return flow_estimator(images[0::2], images[1::2]).float()


def random_token_embedding(table: torch.Tensor, exclude: list[int], generator: torch.Generator) -> torch.Tensor:
    """A random init for a learnable token (``init_words=random``; MotionPrompt appendix B.1 compares it
    with word inits): each dimension drawn from a normal with that dimension's mean and standard
    deviation over the vocabulary rows (the rows ``exclude``, the learnable tokens, left out), so the
    row has the scale of a word embedding but the meaning of none. (D,) float32 on the table's device."""
    keep = torch.ones(table.shape[0], dtype=torch.bool)
    keep[exclude] = False
    rows = table.detach()[keep.to(table.device)].float().cpu()
    noise = torch.randn(rows.shape[1], generator=generator)
    return (rows.mean(0) + rows.std(0) * noise).to(table.device)


def fit_guided_prompt(text, prompt: str, token_strings: list[str], token_ids: list[int],
                      placement: str) -> tuple[str, dict[str, Any] | None]:
    """The guided prompt P + S (or S + P), with P cut word by word from its end until every learnable
    token survives the text encoder's truncation and nothing else is truncated (a long prompt would
    otherwise drop the tokens at the end, and guidance would silently do nothing; at the start they
    survive, and the cut is made here so that it is recorded). Returns the prompt and, if words were cut,
    ``{"words": n, "tokens": m, "prompt_used": ...}`` (a warning is issued); None if nothing was cut
    or the tokenizer cannot tell (:meth:`~mpcore.interfaces.TextTokens.token_ids` returns None)."""
    tokens = " ".join(token_strings)

    def guided(body: str) -> str:
        if not body:
            return tokens
        return f"{body} {tokens}" if placement == "end" else f"{tokens} {body}"  # else 'start'

    def fits(body: str) -> bool:
        seen = text.token_ids(guided(body))
        if seen is None:
            return True
        # nothing truncated: with 'start' the tokens would survive truncation, but P's cut tail must be recorded
        return all(token in seen for token in token_ids) and seen == text.token_ids(guided(body), truncate=False)

    if fits(prompt):
        return guided(prompt), None
    words = prompt.split()
    while words and not fits(" ".join(words)):
        words.pop()
    used = " ".join(words)
    if not fits(used):
        raise ConfigError(f"invalid config: num_tokens={len(token_strings)}; the learnable tokens do not fit in the "
                          "text encoder's context even with an empty prompt")
    cut_tokens = len(text.token_ids(guided(prompt), truncate=False)) - len(text.token_ids(guided(used), truncate=False))
    cut = {"words": len(prompt.split()) - len(words), "tokens": cut_tokens, "prompt_used": used}
    warnings.warn(f"the prompt is longer than the text encoder's context: its last {cut['words']} word(s) "
                  f"({cut_tokens} tokens) were cut so that the learnable token(s) fit", stacklevel=2)
    return guided(used), cut


@dataclass
class LossTerms:
    total: torch.Tensor
    disc: torch.Tensor
    tv: torch.Tensor
    reg: torch.Tensor
    output_at_t: torch.Tensor | None = None
    """The estimate's model output at (x_t, t) (:attr:`CleanEstimate.output_at_t`), detached."""

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "disc", "tv", "reg")}


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def split_init_words(words: list[str], pieces: list[list[str] | None] | None, unknown: str | None) -> list[str]:
    """Warnings for init words the tokenizer does not keep whole: a token starting from the mean of several
    pieces (or of an unknown-token row) starts from no word's embedding (docs/design.md, "The method", step 1)."""
    warnings = []
    for word, word_pieces in zip(words, pieces or []):
        if word_pieces is not None and (len(word_pieces) > 1 or (unknown is not None and unknown in word_pieces)):
            what = "unknown to the tokenizer" if unknown in word_pieces else f"{len(word_pieces)} pieces"
            warnings.append(f"init word {word!r} is {what} {word_pieces}: its token starts from their mean")
    return warnings


class MotionPrompt:
    """The guidance object the sampler calls at every step (see module docstring)."""

    def __init__(
        self,
        config: MotionPromptConfig,
        flow_estimator: FlowEstimator,
        discriminator: Discriminator,
        decoder: Callable[..., torch.Tensor] | None = None,
    ):
        """``decoder``: with ``config.guidance_decoder='tiny'``, what decodes the guided frames for the
        loss, ``images = decoder(latents, checkpoint=...)`` as :meth:`Backbone.decode` (e.g. a
        :class:`mpcore.vae.TinyDecoder`); None with ``'full'``: the backbone's own VAE."""
        if (config.guidance_decoder == "tiny") != (decoder is not None):
            raise ConfigError(f"invalid config: guidance_decoder={config.guidance_decoder!r} with "
                              f"{'no' if decoder is None else 'a'} decoder given to MotionPrompt; allowed: 'tiny' "
                              "with a decoder (mpcore.build_guidance builds it), 'full' without")
        self.config = config
        self.flow_estimator = flow_estimator
        self.discriminator = discriminator
        self.decoder = decoder
        self.trace: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def prepare(self, backbone: Backbone, prompt: str, sampler: SamplerConfig, scheduler) -> None:
        cfg = self.config
        self.backbone = backbone
        self.scheduler = scheduler
        self.schedule = backbone.noise_schedule(scheduler)
        self.sampler = sampler
        self.opt_range = cfg.resolved_opt_range(sampler.steps)
        if backbone.temporal_compression > 1:
            # frames are picked and decoded as latent frames (Backbone.decode_pairs)
            cfg.validate(sampler, backbone.latent_frames(sampler.frames))
            if self.decoder is not None:
                raise ConfigError("invalid config: guidance_decoder='tiny' decodes single frames; backbone "
                                  f"{backbone.name!r} has a causal video VAE (it compresses time "
                                  f"{backbone.temporal_compression}x): use guidance_decoder=full")
        self.token_strings = [TOKEN_FORMAT.format(k) for k in range(cfg.num_tokens)]
        self.token_ids = backbone.text.add_tokens(self.token_strings)
        # init each token from its quality word ('authentic', 'real', 'clear', ...), or at random ('random')
        words = cfg.token_init_words()
        init = torch.stack([
            random_token_embedding(backbone.text.embedding_table(), self.token_ids,
                                   torch.Generator().manual_seed(sampler.seed + RANDOM_INIT_SEED_OFFSET + k))
            if word == RANDOM_INIT else backbone.text.word_embedding(word).float()
            for k, word in enumerate(words)]).float()
        # the tokenizer's pieces of each init word (the init is their mean): T5's sentencepiece may split a word
        word_pieces = getattr(backbone.text, "word_pieces", None)
        self.init_pieces = ([None if w == RANDOM_INIT else word_pieces(w) for w in words] if word_pieces else None)
        self.warnings = split_init_words(words, self.init_pieces, getattr(getattr(backbone.text, "tokenizer", None),
                                                                          "unk_token", None))
        backbone.text.set_rows(self.token_ids, init)
        self.init_embeddings = init.detach().clone()
        self.tokens = torch.nn.Parameter(init.detach().clone())  # float32, the only thing optimized
        self.optimizer = make_optimizer(cfg.optimizer, [self.tokens], cfg.lr)
        self.prompt = prompt
        self.guided_prompt, self.prompt_cut = fit_guided_prompt(backbone.text, prompt, self.token_strings, self.token_ids,
                                                                cfg.placement)
        self.pair_generator = torch.Generator().manual_seed(sampler.seed)
        self.probe_generator = torch.Generator().manual_seed(sampler.seed + PROBE_SEED_OFFSET)
        self.skipped_updates = 0
        self.plain_cond = None
        self.rollout_start: RolloutStart | None = None
        self.last_output_at_t: torch.Tensor | None = None
        self.trace = []

    def override(self) -> dict[int, torch.Tensor]:
        return {token_id: self.tokens[k] for k, token_id in enumerate(self.token_ids)}

    def token_cosine(self) -> list[float]:
        with torch.no_grad():
            return F.cosine_similarity(self.tokens, self.init_embeddings, dim=-1).tolist()

    @torch.no_grad()
    def condition_is_finite(self) -> bool:
        """The token and the guided prompt's embedding with it are finite (a huge but finite token can
        still overflow the text encoder)."""
        if not torch.isfinite(self.tokens).all():
            return False
        return bool(torch.isfinite(self.encode_guided_prompt()).all())

    def in_range(self, step: int) -> bool:
        return self.opt_range[0] <= step < self.opt_range[1]

    # ------------------------------------------------------------------ objective
    def objective(
        self,
        latents: torch.Tensor,
        step: int,
        uncond: torch.Tensor,
        uncond_output: torch.Tensor | None,
        pairs: list[tuple[int, int]],
    ) -> LossTerms:
        """The MotionPrompt loss (:mod:`mpcore.losses`) for the current token values at x_t of sampling
        step ``step`` on the frame pairs ``pairs``, differentiable w.r.t. them."""
        cfg = self.config
        cond = self.encode_guided_prompt()  # c* = encode(P + S)
        frame_index = [f for pair in pairs for f in pair]
        if self.rollout_start is not None:  # rollout_gradient='last_call': only the last call sees the token
            start = self.rollout_start
            estimate = estimate_clean_frames(self.backbone, self.schedule, start.latents, start.index, cond, uncond,
                                             self.sampler.cfg_scale, frame_index, 1, start.uncond_output)
        else:
            plain = self.plain_condition() if cfg.rollout_prompt == "as_sampled" and cfg.estimate_calls() > 1 else None
            estimate = estimate_clean_frames(self.backbone, self.schedule, latents, step, cond, uncond,
                                             self.sampler.cfg_scale, frame_index, cfg.estimate_calls(), uncond_output,
                                             plain_cond=plain, plain_from=self.opt_range[1])
        images = self.decode_frames(estimate.frames)
        flow = pair_flow(self.flow_estimator, images, cfg.flow_size)
        disc = losses.adversarial(self.discriminator(flow))
        tv = losses.total_variation(flow)
        reg = losses.token_regularizer(self.tokens, self.init_embeddings)
        total = cfg.l_disc * disc + cfg.l_tv * tv + cfg.l_reg * reg
        return LossTerms(total=total, disc=disc, tv=tv, reg=reg, output_at_t=estimate.output_at_t)

    def encode_guided_prompt(self) -> torch.Tensor:
        """c*: the guided prompt P + S encoded with the current learnable token rows (differentiable
        w.r.t. them where grad is enabled)."""
        return self.backbone.encode_prompt([self.guided_prompt], self.override())

    @torch.no_grad()
    def plain_condition(self) -> torch.Tensor:
        """c of the plain prompt P, what the sampler conditions on after the range (encoded once)."""
        if self.plain_cond is None:
            self.plain_cond = self.backbone.encode_prompt([self.prompt])
        return self.plain_cond

    def decode_frames(self, x0_frames: torch.Tensor) -> torch.Tensor:
        """The images of the estimated clean frames (n, C, h, w) of adjacent pairs (a0, b0, a1, b1, ...),
        VAE latent scale already undone, in [-1, 1], float32: through the backbone's VAE in its dtype
        (:meth:`Backbone.decode_pairs`: one adjacent video-frame pair per latent pair), or through the
        guidance decoder (``guidance_decoder='tiny'``); checkpointed if ``checkpoint_vae``."""
        if self.decoder is not None:
            return self.decoder(x0_frames, checkpoint=self.config.checkpoint_vae).float()
        return self.backbone.decode_pairs(x0_frames.to(self.backbone.dtype), checkpoint=self.config.checkpoint_vae).float()

    def optimize_step(
        self, latents: torch.Tensor, step: int, uncond: torch.Tensor, uncond_output: torch.Tensor | None
    ) -> list[dict[str, Any]]:
        """K optimizer iterations at one sampling step; returns the per-iteration loss terms. The last
        iteration's model output at x_t is kept in ``last_output_at_t``."""
        iterations = []
        num_pairs = self.config.decoded_frames // 2
        latents = latents.detach()
        for _ in range(self.config.iterations):
            pairs = select_frame_pairs(latents.shape[2], num_pairs, self.pair_generator)
            self.optimizer.zero_grad(set_to_none=True)
            terms = self.objective(latents, step, uncond, uncond_output, pairs)
            record = {**terms.as_floats(), "pairs": pairs, "skipped": False}
            self.last_output_at_t = terms.output_at_t
            skip_reason = self.update_tokens(terms.total)
            if skip_reason is not None:
                self.skipped_updates += 1
                record["skipped"] = True
                record["skip_reason"] = skip_reason
            iterations.append(record)
        return iterations

    def update_tokens(self, total: torch.Tensor) -> str | None:
        """One optimizer step on the token rows down the gradient of the loss ``total``, unless it is
        unsafe: returns why the update was skipped, or None if it was taken."""
        if torch.isfinite(total):
            total.backward()
        if not torch.isfinite(total) or self.tokens.grad is None or not torch.isfinite(self.tokens.grad).all():
            # a NaN/inf loss or gradient never reaches the tokens (hence never the latents)
            self.optimizer.zero_grad(set_to_none=True)
            return "non-finite loss" if not torch.isfinite(total) else "non-finite gradient"
        last_good = self.tokens.detach().clone()
        self.optimizer.step()
        if not self.condition_is_finite():
            # an update that overflowed (e.g. a huge lr) is undone before any further model call
            with torch.no_grad():
                self.tokens.copy_(last_good)
            return "non-finite token or prompt embedding after the update"
        return None

    @torch.no_grad()
    def probe(self, latents, step, uncond, uncond_output, pairs) -> float:
        """The discriminator term on ``pairs`` with the current token, no gradient (the gate's probe)."""
        return float(self.objective(latents.detach(), step, uncond, uncond_output, pairs).disc)

    # ------------------------------------------------------------------ sampler interface
    def condition(self, step, t, latents, cond, uncond) -> StepCondition | None:
        """The condition of sampling step ``step``: None outside the optimization range (the plain
        prompt P); inside it, c* after the K token updates (measured by the gate probe before and
        after them if ``probe_pairs`` is set). Appends the step's record to the trace."""
        entry: dict[str, Any] = {"step": step, "timestep": int(t), "optimized": self.in_range(step)}
        if not self.in_range(step):
            entry["cosine"] = self.token_cosine()
            self.trace.append(entry)
            return None  # before and after the range: the original prompt P
        uncond_output = self.predict_uncond(latents, t, uncond)
        self.rollout_start = self.start_rollout(latents, step, uncond, uncond_output)
        probe_pairs = None
        if self.config.probe_pairs:
            probe_pairs = select_frame_pairs(latents.shape[2], self.config.probe_pairs, self.probe_generator)
            disc_before = self.probe(latents, step, uncond, uncond_output, probe_pairs)
        entry["iterations"] = self.optimize_with_checkpointing(latents, step, uncond, uncond_output)
        if probe_pairs is not None:
            entry["probe"] = {"pairs": probe_pairs, "disc_before": disc_before,
                              "disc_after": self.probe(latents, step, uncond, uncond_output, probe_pairs)}
        guided_cond = self.commit_tokens()
        entry["cosine"] = self.token_cosine()
        self.trace.append(entry)
        last = entry["iterations"][-1]
        info = {"loss": f"{last['total']:.4g}", "cos": f"{entry['cosine'][0]:.4f}"}
        return StepCondition(cond=guided_cond, uncond_output=uncond_output, info=info, model_output=self.step_output())

    def start_rollout(self, latents, step, uncond, uncond_output) -> RolloutStart | None:
        """With ``rollout_gradient='last_call'`` (and a rollout of several calls): the calls before the last,
        once for the step, without gradient, with the token as it stands before the step's updates."""
        cfg = self.config
        if cfg.rollout_gradient != "last_call" or cfg.estimate_calls() == 1:
            return None
        with torch.no_grad():
            cond = self.encode_guided_prompt()
        return rollout_to_last_call(self.backbone, self.schedule, latents, step, cond, uncond, self.sampler.cfg_scale,
                                    cfg.estimate_calls(), uncond_output)

    def step_output(self) -> torch.Tensor | None:
        """The model output the sampling step takes: with ``step_output='last_iteration'``, the output at x_t
        of the K-th update (token one update stale) if finite; None = a fresh forward with the updated token."""
        output = self.last_output_at_t
        if self.config.step_output != "last_iteration" or output is None or not torch.isfinite(output).all():
            return None
        return output

    @torch.no_grad()
    def predict_uncond(self, latents: torch.Tensor, t: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor | None:
        """The unconditional model output at (x_t, t), computed once per step and shared by the K
        iterations and the DDIM step (it does not depend on the token); None without CFG."""
        if self.sampler.cfg_scale > 1.0:
            return self.backbone.predict(latents, t, uncond)
        return None

    def optimize_with_checkpointing(self, latents, step, uncond, uncond_output) -> list[dict[str, Any]]:
        """:meth:`optimize_step` with gradients on and the denoiser's activation checkpointing as
        configured (switched off again afterwards: the DDIM step needs no gradient)."""
        self.backbone.set_denoiser_checkpointing(self.config.checkpoint_denoiser)
        try:
            with torch.enable_grad():
                return self.optimize_step(latents, step, uncond, uncond_output)
        finally:
            self.backbone.set_denoiser_checkpointing(False)

    @torch.no_grad()
    def commit_tokens(self) -> torch.Tensor:
        """Write the optimized token rows into the text encoder's table and return c* with them: the
        condition of this step's DDIM update."""
        self.backbone.text.set_rows(self.token_ids, self.tokens.detach())
        return self.encode_guided_prompt()

    def finish(self) -> dict[str, Any]:
        return {
            "guided_prompt": self.guided_prompt,
            "tokens": self.token_strings,
            "init_words": self.config.token_init_words(),
            "init_pieces": self.init_pieces,
            "warnings": self.warnings,
            "opt_range": list(self.opt_range),
            "prompt_cut": self.prompt_cut,
            "skipped_updates": self.skipped_updates,
            "final_cosine": self.token_cosine(),
            "token_drift_l2": [float(v) for v in (self.tokens.detach() - self.init_embeddings).norm(dim=-1)],
            "trace": self.trace,
        }

