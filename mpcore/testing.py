"""Stand-ins for tests of mpcore and its plugins (like diffusers' ``testing_utils``): a differentiable
flow estimator and a fixed discriminator that cost nothing, so guidance tests exercise the real
sampler and MotionPrompt without RAFT/TV-L1 or a trained ViT."""

from __future__ import annotations

from typing import Any

import torch


class DifferenceFlow(torch.nn.Module):
    """A differentiable stand-in flow: the colour difference of the frames scaled to pixels."""

    def forward(self, frame_a, frame_b):
        return (frame_b - frame_a)[:, :2] * 8.0


class LinearDiscriminator(torch.nn.Module):
    """A fixed random linear discriminator on flow (deterministic per seed)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(2, generator=generator), requires_grad=False)

    def forward(self, flow):
        return (flow * self.weight[None, :, None, None]).mean(dim=(1, 2, 3)) - flow.abs().mean(dim=(1, 2, 3))


def smooth_images(n: int, height: int, width: int) -> torch.Tensor:
    """``n`` different smooth images (n, 3, height, width) in [-0.8, 0.8]."""
    y = torch.linspace(-1, 1, height)[:, None]
    x = torch.linspace(-1, 1, width)[None, :]
    return torch.stack([torch.stack([0.8 * torch.sin((k + 1) * 2.0 * x + (k - 1) * y + c) for c in range(3)])
                        for k in range(n)])


def check_encode_contract(backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """The parts of ``Backbone.encode``'s contract every backbone shares: the shape (non-square, so h and
    w cannot swap), the backbone's dtype and device for any input dtype, finite, no gradient,
    deterministic, frame i from image i, and decodable. Returns (images, latents) for the backbone's
    own check that the latents are the unscaled posterior mean."""
    images = smooth_images(3, 32, 48)
    latents = backbone.encode(images.double())
    f = backbone.vae_scale_factor
    assert latents.shape == (3, backbone.latent_channels, 32 // f, 48 // f)
    assert latents.dtype == backbone.dtype and latents.device == backbone.device
    assert torch.isfinite(latents).all() and not latents.requires_grad
    assert torch.equal(backbone.encode(images), latents)  # deterministic: the mean, not a sample
    # frame i's latent is image i's: swapping frames swaps rows (and the rows differ)
    torch.testing.assert_close(backbone.encode(images[[1, 0, 2]]), latents[[1, 0, 2]])
    assert (latents[0] - latents[1]).abs().max() > 1e-2
    assert backbone.decode(latents).shape == images.shape  # the inverse direction of decode
    return images, latents


# ----------------------------------------------------------------------------- guided-sampling contract
# Every backbone plugin runs these on its tiny model(s), as a third-party backbone should (see the plugin
# template's docstring): guidance-off sampling is held against the backbone's reference elsewhere; these
# hold the GUIDED paths against the backbone's own scheduler (docs/design.md, "Contracts").


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64."""
    value, reference = value.double(), reference.double()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


def _fresh_scheduler(backbone, steps: int, factory=None):
    """A scheduler as the backbone's (or ``factory()``), timesteps set; its step index found from the
    timestep it is stepped at (no begin index), so it can start anywhere on the trajectory."""
    scheduler = factory() if factory is not None else backbone.make_scheduler()
    scheduler.set_timesteps(steps, device=backbone.device)
    return scheduler


def _conditions(backbone, config, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    backbone.prepare_sampling(config)
    with torch.no_grad():
        cond = backbone.encode_prompt([prompt])
        uncond = backbone.encode_negative_prompt([config.negative_prompt]) if config.cfg_scale > 1.0 else cond
    return cond, uncond


def _random_latents(backbone, config, seed: int) -> torch.Tensor:
    from mpcore.sampling import latent_shape

    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, *latent_shape(backbone, config)), generator=generator).to(backbone.device,
                                                                                      backbone.latent_dtype)


def _step(scheduler, output: torch.Tensor, t, x: torch.Tensor):
    """One deterministic step of ``scheduler`` (eta 0): (prev_sample, pred_original_sample or None)."""
    import inspect

    params = inspect.signature(scheduler.step).parameters
    if "old_pred_original_sample" in params:  # CogVideoX's DPM: first-order when given no history
        prev, x0 = scheduler.step(output, None, t, None, x, return_dict=False)
        return prev, x0
    kwargs = {"eta": 0.0} if "eta" in params else {}
    result = scheduler.step(output, t, x, **kwargs)
    return result.prev_sample, getattr(result, "pred_original_sample", None)


def check_transitions_match_scheduler(backbone, config, scheduler_factory=None, tolerance: float = 1e-5) -> float:
    """The backbone's deterministic transition between consecutive sampling steps (MotionPrompt's
    rollout move) equals ``scheduler.step`` with eta 0, at the first, a middle and the second-to-last
    step, on random latents and model outputs. ``scheduler_factory``: a single-step scheduler of the same
    schedule where the backbone's own is multistep (UniPC, DPM-Solver: their step depends on history).
    Returns the largest relative error."""
    worst = 0.0
    for index in sorted({0, config.steps // 2, config.steps - 2}):
        scheduler = _fresh_scheduler(backbone, config.steps, scheduler_factory)
        schedule = backbone.noise_schedule(scheduler)
        x = _random_latents(backbone, config, 10 + index)
        output = _random_latents(backbone, config, 20 + index).to(backbone.dtype)
        reference, _ = _step(scheduler, output, scheduler.timesteps[index], x)
        error = relative_error(schedule.transition(x, output, index, index + 1), reference)
        assert error <= tolerance, f"transition at step {index}: relative error {error:.3g} > {tolerance}"
        worst = max(worst, error)
    return worst


def check_clean_estimate_matches_scheduler(backbone, config, prompt: str = "a fox running",
                                           tolerance: float = 1e-5) -> float | None:
    """MotionPrompt's one-step clean estimate (:func:`mpcore.motionprompt.estimate_clean_frames`, latent
    scale undone) equals the scheduler's own ``pred_original_sample`` of the same model output, decoded
    the same way, at the first, a middle and the last step. None where the scheduler exposes none."""
    from mpcore.motionprompt import estimate_clean_frames
    from mpcore.sampling import cfg_output

    cond, uncond = _conditions(backbone, config, prompt)
    worst = 0.0
    for index in sorted({0, config.steps // 2, config.steps - 1}):
        scheduler = _fresh_scheduler(backbone, config.steps)
        schedule = backbone.noise_schedule(scheduler)
        x = _random_latents(backbone, config, 30 + index)
        t = scheduler.timesteps[index]
        frames = list(range(x.shape[2]))
        with torch.no_grad():
            output = cfg_output(backbone, x, t, cond, uncond, config.cfg_scale)
            _, x0 = _step(scheduler, output, t, x)
            if x0 is None:
                return None
            ours = estimate_clean_frames(backbone, schedule, x, index, cond, uncond, config.cfg_scale, frames,
                                         calls=1).frames
        reference = (x0.float() / schedule.predicted_original_scale(index))[0].transpose(0, 1)
        error = relative_error(ours, reference)
        assert error <= tolerance, f"clean estimate at step {index}: relative error {error:.3g} > {tolerance}"
        worst = max(worst, error)
    return worst


def check_rollout_matches_scheduler(backbone, config, prompt: str = "a fox running", calls: int = 3,
                                    scheduler_factory=None, tolerance: float = 1e-5) -> float:
    """A rollout of ``calls`` model calls over the last ``calls`` sampling steps (consecutive) equals the
    scheduler stepping them with eta 0 and the same CFG outputs, then the clean estimate at the last one.
    Returns the relative error."""
    from mpcore.motionprompt import estimate_clean_frames
    from mpcore.sampling import cfg_output

    cond, uncond = _conditions(backbone, config, prompt)
    start = config.steps - calls
    scheduler = _fresh_scheduler(backbone, config.steps, scheduler_factory)
    schedule = backbone.noise_schedule(scheduler)
    x_start = _random_latents(backbone, config, 40)
    frames = list(range(x_start.shape[2]))
    with torch.no_grad():
        x = x_start
        for index in range(start, config.steps - 1):
            t = scheduler.timesteps[index]
            x, _ = _step(scheduler, cfg_output(backbone, x, t, cond, uncond, config.cfg_scale), t, x)
            x = x.to(backbone.latent_dtype)
        last = config.steps - 1
        output = cfg_output(backbone, x, scheduler.timesteps[last], cond, uncond, config.cfg_scale)
        reference = (schedule.clean_estimate(x, output, last) / schedule.latent_scale(last))[0].transpose(0, 1)
        ours = estimate_clean_frames(backbone, backbone.noise_schedule(_fresh_scheduler(backbone, config.steps,
                                                                                        scheduler_factory)),
                                     x_start, start, cond, uncond, config.cfg_scale, frames, calls=calls).frames
    error = relative_error(ours, reference)
    assert error <= tolerance, f"rollout from step {start} ({calls} calls): relative error {error:.3g} > {tolerance}"
    return error


def check_diffuse_matches_training(backbone, config, training_noising, tolerance: float = 1e-5) -> float:
    """The backbone's diffusion of a clean latent (FreeInit, ``mpcore diagnose``) equals
    ``training_noising(clean, noise, t)``, the backbone's training-time noising written from its
    reference (lvdm: with its scale schedule), at the start timestep and two sampling timesteps. ``clean``
    is in the sampler's final-latent convention."""
    scheduler = _fresh_scheduler(backbone, config.steps)
    schedule = backbone.noise_schedule(scheduler)
    clean = _random_latents(backbone, config, 50).float()
    noise = _random_latents(backbone, config, 51).float()
    worst = 0.0
    for t in (schedule.start_timestep(), int(scheduler.timesteps[1]), int(scheduler.timesteps[-1])):
        error = relative_error(schedule.diffuse(clean, noise, t), training_noising(clean, noise, t))
        assert error <= tolerance, f"diffusion to t={t}: relative error {error:.3g} > {tolerance}"
        worst = max(worst, error)
    return worst


def check_rollout_gradients(backbone, config, prompt: str = "a fox running", calls: int = 3,
                            tolerance: float = 1e-5) -> dict[str, float]:
    """The gradient of a rollout estimate w.r.t. the condition flows through every model call: it differs
    from the gradient through the last call alone (the earlier calls' outputs cut off; a ``.detach()``
    there makes them equal). And ``rollout_gradient='last_call'`` (:func:`mpcore.motionprompt.rollout_to_last_call`,
    then the one-call estimate from where it starts) is exactly that last-call gradient, on the same
    estimate as the full rollout. Returns {"every_call_difference", "last_call_gradient_error",
    "last_call_estimate_error"}."""
    from mpcore.motionprompt import estimate_clean_frames, rollout_indices, rollout_to_last_call
    from mpcore.sampling import cfg_output

    cond, uncond = _conditions(backbone, config, prompt)
    start = max(0, config.steps // 2 - 1)
    schedule = backbone.noise_schedule(_fresh_scheduler(backbone, config.steps))
    x_start = _random_latents(backbone, config, 60)
    frames = list(range(x_start.shape[2]))
    weights = torch.randn((x_start.shape[2], *x_start.shape[1:2], *x_start.shape[3:]),
                          generator=torch.Generator().manual_seed(61)).to(backbone.device)

    def gradient(x, step, n, uncond_output=None):
        c = cond.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            estimate = estimate_clean_frames(backbone, schedule, x, step, c, uncond, config.cfg_scale, frames, calls=n,
                                             uncond_output=uncond_output).frames
            (estimate * weights).sum().backward()
        return c.grad.detach().float(), estimate.detach().float()

    indices = rollout_indices(config.steps, start, calls)
    assert len(indices) == calls > 1, "the check needs a rollout of at least 2 calls"
    full, full_estimate = gradient(x_start, start, calls)
    with torch.no_grad():  # x at the last call, reached without gradient
        x = x_start
        for index, next_index in zip(indices[:-1], indices[1:]):
            x = schedule.transition(x, cfg_output(backbone, x, schedule.timesteps[index], cond, uncond,
                                                  config.cfg_scale), index, next_index)
    last_only, _ = gradient(x, indices[-1], 1)
    difference = relative_error(full, last_only)
    assert torch.isfinite(full).all() and full.abs().sum() > 0, "no gradient reached the condition"
    assert difference > 1e-3, ("the rollout's gradient is the last call's alone: the earlier calls pass no gradient "
                               f"(relative difference {difference:.3g})")
    rollout_start = rollout_to_last_call(backbone, schedule, x_start, start, cond, uncond, config.cfg_scale, calls)
    assert rollout_start.index == indices[-1], f"last_call starts at step {rollout_start.index}, not {indices[-1]}"
    variant, variant_estimate = gradient(rollout_start.latents, rollout_start.index, 1, rollout_start.uncond_output)
    gradient_error = relative_error(variant, last_only)
    estimate_error = relative_error(variant_estimate, full_estimate)
    assert gradient_error <= tolerance, f"rollout_gradient=last_call: gradient relative error {gradient_error:.3g}"
    assert estimate_error <= tolerance, f"rollout_gradient=last_call: estimate relative error {estimate_error:.3g}"
    return {"every_call_difference": difference, "last_call_gradient_error": gradient_error,
            "last_call_estimate_error": estimate_error}


def check_stale_step_output(backbone, config, prompt: str = "a fox running", tolerance: float = 1e-5) -> float:
    """``step_output='last_iteration'``: over a one-step range, K = 2 updates with the step taking the second
    update's output at x_t (token after ONE update) sample the same latents as K = 1 with a fresh forward
    (also after one update), and differ from K = 2 fresh by far more (the check is not vacuous). Returns the
    relative error of the first pair."""
    from mpcore.config import MotionPromptConfig
    from mpcore.motionprompt import MotionPrompt
    from mpcore.sampling import sample

    step = config.steps // 2

    def run(iterations: int, step_output: str) -> torch.Tensor:
        settings = MotionPromptConfig(iterations=iterations, step_output=step_output, opt_range=(step, step + 1),
                                      decoded_frames=2, lr=0.05, l_reg=0.0, flow_estimator="stand-in")
        guidance = MotionPrompt(settings, DifferenceFlow(), LinearDiscriminator())
        return sample(backbone, prompt, config, guidance, progress=False).latents.float()

    stale, fresh_one, fresh_two = run(2, "last_iteration"), run(1, "fresh"), run(2, "fresh")
    error = relative_error(stale, fresh_one)
    assert error <= tolerance, f"step_output=last_iteration is not the output after K - 1 updates: {error:.3g}"
    difference = relative_error(fresh_two, fresh_one)
    assert difference > max(10 * error, 1e-6), f"the second update changed the step by {difference:.3g}: check vacuous"
    return error


class _ShiftOnce:
    """A guidance that adds ``delta`` to x_t at step ``at`` and records x_t entering step ``at + 1``."""

    def __init__(self, at: int, delta: torch.Tensor | None, keep_scheduler_state: bool = False):
        self.at, self.delta, self.after, self.keep = at, delta, None, keep_scheduler_state

    def prepare(self, backbone, prompt, config, scheduler):
        pass

    def condition(self, step, t, latents, cond, uncond):
        from mpcore.sampling import StepCondition

        if step == self.at + 1:
            self.after = latents.detach().clone()
        if step == self.at and self.delta is not None:
            return StepCondition(cond=cond, latents=latents + self.delta.to(latents.dtype), keep_scheduler_state=self.keep)
        return None

    def finish(self):
        return {}


def measure_latent_change_survival(backbone, config, prompt: str = "a fox running", at: int = 1,
                                   min_fraction: float = 0.5, keep_scheduler_state: bool = False) -> float:
    """How much of a guidance's change of x_t at step ``at`` (:attr:`~mpcore.sampling.StepCondition.latents`)
    the sampler carries into step ``at + 1``: <x'_{t+1} - x_{t+1}, delta> / <delta, delta> between the runs
    with and without the change (about 1 when the change survives; UniPC's corrector, left alone, keeps
    about 1-12% of it). Returns the fraction, asserted >= ``min_fraction`` (0.5; a stochastic step that
    contracts its sample by design, CogVideoX's DPM-Solver SDE step, passes its own lower bound).
    ``keep_scheduler_state=True`` measures what survives when the scheduler is NOT told (FlowMo's
    published loop)."""
    from mpcore.sampling import sample

    delta = 0.05 * _random_latents(backbone, config, 70).float()
    runs = []
    for change in (None, delta):
        guidance = _ShiftOnce(at, change, keep_scheduler_state)
        sample(backbone, prompt, config, guidance, progress=False)
        runs.append(guidance.after.float())
    fraction = float(((runs[1] - runs[0]) * delta).sum() / (delta * delta).sum())
    assert fraction >= min_fraction, f"only {fraction:.3f} of a guidance's change of x_t survives one step"
    return fraction


class _NoOp:
    """Asks for the plain condition (returns None) at every step."""

    def prepare(self, backbone, prompt, config, scheduler):
        pass

    def condition(self, step, t, latents, cond, uncond):
        return None

    def finish(self):
        return {}


def check_guidance_off_is_plain(backbone, config, prompt: str = "a fox running") -> bool:
    """A guidance that never changes a step (it returns None) gives bitwise the plain sampler's latents."""
    from mpcore.sampling import sample

    plain = sample(backbone, prompt, config, progress=False).latents
    guided = sample(backbone, prompt, config, _NoOp(), progress=False).latents
    assert torch.equal(plain, guided), "a guidance that changes nothing changed the sampled latents"
    return True


def check_token_placement_seen_by_encoder(backbone, config, placement: str = "end") -> list[int]:
    """The ids the text encoder's embedding lookup RECEIVES for MotionPrompt's guided prompt begin with
    exactly :meth:`~mpcore.interfaces.TextTokens.token_ids` of it (then padding only), with each learnable
    token once, where ``placement`` puts it: right before the closing EOS ('end') or first after BOS
    ('start'). Returns the ids seen."""
    from mpcore.config import MotionPromptConfig
    from mpcore.motionprompt import MotionPrompt

    guidance = MotionPrompt(MotionPromptConfig(placement=placement, decoded_frames=2), DifferenceFlow(),
                            LinearDiscriminator())
    guidance.prepare(backbone, "a dog running on the beach", config, _fresh_scheduler(backbone, config.steps))
    table = backbone.text.embedding_table()
    seen: list[torch.Tensor] = []
    modules = [value for value in vars(backbone.text).values() if isinstance(value, torch.nn.Module)]
    lookups = {id(m): m for root in modules for m in root.modules()
               if isinstance(m, torch.nn.Embedding) and m.weight.data_ptr() == table.data_ptr()}
    hooks = [m.register_forward_hook(lambda module, args, output: seen.append(args[0].detach().cpu()))
             for m in lookups.values()]
    try:
        with torch.no_grad():
            guidance.encode_guided_prompt()
    finally:
        for hook in hooks:
            hook.remove()
    assert seen, "no embedding lookup of the text encoder's table was observed while encoding"
    row = seen[0].reshape(-1, seen[0].shape[-1])[0].tolist()
    expected = backbone.text.token_ids(guidance.guided_prompt)
    assert row[: len(expected)] == expected, f"the encoder sees {row[:len(expected) + 2]}, token_ids say {expected}"
    assert len(set(row[len(expected):])) <= 1, f"after the prompt's ids the encoder sees more than padding: {row}"
    n = len(guidance.token_ids)
    assert all(row.count(token) == 1 for token in guidance.token_ids), f"each learnable token once: {row}"
    if placement == "end":
        assert expected[-1 - n:-1] == guidance.token_ids, f"the tokens are not right before the closing EOS: {expected}"
    else:  # first, or right after a BOS
        start = expected.index(guidance.token_ids[0])
        assert start <= 1 and expected[start:start + n] == guidance.token_ids, f"the tokens are not at the start: {expected}"
    return row


def run_guided_contract(backbone, config, training_noising, scheduler_factory=None, min_survival: float = 0.5,
                        prompt: str = "a fox running") -> dict[str, float | bool | None]:
    """The whole guided-sampling contract on one backbone (each check above; they raise AssertionError
    naming what broke). ``config``: a small :class:`~mpcore.config.SamplerConfig` with at least 4 steps and
    CFG on; ``training_noising(clean, noise, t)``: the backbone's training-time noising from its reference;
    ``scheduler_factory``: a single-step scheduler of the same schedule if the backbone's own is multistep.
    Returns the measurements (relative errors, gradient difference, surviving fraction)."""
    assert config.steps >= 4 and config.cfg_scale > 1.0, "the contract needs >= 4 steps and CFG on"
    return {
        "transition_error": check_transitions_match_scheduler(backbone, config, scheduler_factory),
        "clean_estimate_error": check_clean_estimate_matches_scheduler(backbone, config, prompt),
        "rollout_error": check_rollout_matches_scheduler(backbone, config, prompt, scheduler_factory=scheduler_factory),
        "diffuse_error": check_diffuse_matches_training(backbone, config, training_noising),
        **{f"rollout_{k}": v for k, v in check_rollout_gradients(backbone, config, prompt).items()},
        "stale_step_error": check_stale_step_output(backbone, config, prompt),
        "latent_change_survival": measure_latent_change_survival(backbone, config, prompt, min_fraction=min_survival),
        "guidance_off_bitwise": check_guidance_off_is_plain(backbone, config, prompt),
        "placement_ids_seen": float(len(check_token_placement_seen_by_encoder(backbone, config))),
    }


def check_wrapped_samples_like_run(name: str, wrapped, prompt: str, settings: dict, out) -> Any:
    """The contract of ``BackboneSpec.wrap`` on a plugin's tiny model: ``wrapped`` (``mpcore.wrap_pipeline`` of the
    pipeline ``load(model="tiny")`` builds) samples exactly what ``mpcore run --backbone NAME --model tiny
    --guidance none`` with ``settings`` (``RunOptions`` fields: seed, steps, frames, ...) writes as lossless frames
    at ``out`` (through the run job itself), and the same latents as ``mpcore.load_backbone(NAME, model="tiny")``.
    Returns the wrapped backbone's :class:`mpcore.jobs.execute.Generation`; raises AssertionError otherwise."""
    import numpy as np

    from mpcore.io.video import read_video
    from mpcore.jobs import run, setup
    from mpcore.jobs.execute import generate
    from mpcore.jobs.load import load_backbone
    from mpcore.jobs.options import RunOptions

    generation = generate(wrapped, prompt, guidance=None, progress=False, **settings)
    run_setup = setup.prepare(RunOptions(backbone=name, model="tiny", guidance="none", progress=False, **settings))
    run.run_one(run_setup, setup.load(run_setup), prompt, run_setup.sampler.seed, out, report=None)
    assert generation.video.dtype == np.uint8, generation.video.dtype
    assert np.array_equal(read_video(out), generation.video), "the wrapped pipeline's video differs from mpcore run's"
    loaded = generate(load_backbone(name, model="tiny", device="cpu", progress=False), prompt, guidance=None,
                      progress=False, **settings)
    assert torch.equal(loaded.latents, generation.latents), "the wrapped pipeline's latents differ from the loaded model's"
    return generation
