"""FreeInit (Wu et al. 2023): one pass is plain sampling; more passes are AnimateDiffPipeline's FreeInit;
our low-pass filter and frequency mix equal diffusers' (private) ones; the re-initialized x_T keeps the
diffused sample's low frequencies; another scheduler is passed through; guided passes and the CLI run."""

from __future__ import annotations

import json

import pytest
import torch

from mpcore.config import ConfigError, FreeInitConfig, SamplerConfig
from mpcore.free_init import diffuse_to_start, low_pass_filter, mix_frequencies, sample_free_init
from mpcore.sampling import sample, scheduler_factory


def test_one_pass_is_plain_sampling_bitwise(tiny_backbone, sampler_config):
    plain = sample(tiny_backbone, "a fox", sampler_config, progress=False)
    once = sample_free_init(tiny_backbone, "a fox", sampler_config, FreeInitConfig(iterations=1), progress=False)
    assert torch.equal(once.latents, plain.latents)
    assert once.free_init is None


@pytest.mark.parametrize("method", ["butterworth", "gaussian"])
def test_two_passes_equal_animatediff_pipeline_free_init(tiny_backbone, sampler_config, method):
    config = sampler_config
    ours = sample_free_init(tiny_backbone, "a fox", config, FreeInitConfig(iterations=2, method=method), progress=False)
    pipe = tiny_backbone.pipe
    pipe.scheduler = tiny_backbone.make_scheduler()
    pipe.enable_free_init(num_iters=2, method=method)
    try:
        theirs = pipe(prompt="a fox", num_frames=config.frames, height=config.height, width=config.width,
                      num_inference_steps=config.steps, guidance_scale=config.cfg_scale,
                      generator=torch.Generator().manual_seed(config.seed), output_type="latent").frames
    finally:
        pipe.disable_free_init()
    plain = sample(tiny_backbone, "a fox", config, progress=False).latents
    assert (ours.latents - theirs).abs().max().item() <= 1e-5
    assert not torch.allclose(ours.latents, plain)  # the second pass really started elsewhere
    record = ours.free_init
    assert record["iterations"] == 2 and record["method"] == method and len(record["passes"]) == 2


ODD_SHAPES = [(1, 4, 5, 7, 9), (2, 3, 4, 6, 6), (1, 2, 3, 5, 4)]
STOP_FREQUENCIES = [(0.25, 0.25), (0.5, 0.25), (0.25, 0.6), (0.9, 0.15), (1.0, 1.0)]  # (D_s, D_t)


def diffusers_filter(shape, config: FreeInitConfig) -> torch.Tensor:
    """The reference: diffusers' private ``FreeInitMixin._get_free_init_freq_filter`` (it reads nothing of the
    pipeline), with the filter shape AnimateDiffPipeline gives it."""
    from diffusers.pipelines.free_init_utils import FreeInitMixin

    return FreeInitMixin._get_free_init_freq_filter(
        None, shape=(1, *shape[1:]), device="cpu", filter_type=config.method, order=config.order,
        spatial_stop_frequency=config.spatial_stop_frequency, temporal_stop_frequency=config.temporal_stop_frequency)


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method,order", [("butterworth", 1), ("butterworth", 4), ("butterworth", 7),
                                          ("gaussian", 4), ("ideal", 4)])
def test_low_pass_filter_and_mix_equal_diffusers(shape, method, order):
    """Ours against diffusers' FreeInitMixin functions at odd shapes (off-centre grids on odd axes), stop
    frequencies with D_s != D_t (the temporal scaling D_s/D_t matters) and several orders; the mix on random
    latents with our filter and with a random, asymmetric one (fftshift vs ifftshift matter)."""
    from diffusers.pipelines.free_init_utils import FreeInitMixin

    generator = torch.Generator().manual_seed(sum(shape) + order)
    x, noise = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    for d_s, d_t in STOP_FREQUENCIES:
        config = FreeInitConfig(method=method, order=order, spatial_stop_frequency=d_s, temporal_stop_frequency=d_t)
        ours, theirs = low_pass_filter(shape, config, "cpu"), diffusers_filter(shape, config)
        assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == theirs.shape == (1, *shape[1:])
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        if method != "ideal":  # a smooth filter passes part of most frequencies
            assert 0 < theirs.min() < theirs.max() <= 1
        torch.testing.assert_close(mix_frequencies(x, noise, ours), FreeInitMixin._apply_freq_filter(None, x, noise, theirs),
                                   rtol=0, atol=1e-6)
    if method == "butterworth" and order == 4:  # the cases above discriminate: D_t and the centre matter
        config = FreeInitConfig(spatial_stop_frequency=0.5, temporal_stop_frequency=0.25)
        same_d = FreeInitConfig(spatial_stop_frequency=0.5, temporal_stop_frequency=0.5)
        assert (diffusers_filter(shape, config) - diffusers_filter(shape, same_d)).abs().max() > 1e-2
        flipped = torch.flip(diffusers_filter(shape, config), dims=(-3, -2, -1))
        assert (flipped - diffusers_filter(shape, config)).abs().max() > 1e-3  # an off-centre grid: not symmetric
    random_filter = torch.rand((1, *shape[1:]), generator=generator)
    torch.testing.assert_close(mix_frequencies(x, noise, random_filter),
                               FreeInitMixin._apply_freq_filter(None, x, noise, random_filter), rtol=0, atol=1e-6)


def test_a_scheduler_factory_is_used_by_every_pass(tiny_backbone, sampler_config):
    """``make_scheduler`` reaches every pass: one pass with DDPM is ``sample`` with DDPM; two passes with 'ddim'
    are the backbone's own; two with DDPM differ from them; the backbone itself is left as it was."""
    ddpm = scheduler_factory(tiny_backbone, "ddpm")
    once = sample_free_init(tiny_backbone, "a fox", sampler_config, FreeInitConfig(iterations=1), progress=False,
                            make_scheduler=ddpm)
    assert torch.equal(once.latents, sample(tiny_backbone, "a fox", sampler_config, progress=False,
                                            make_scheduler=ddpm).latents)
    twice = FreeInitConfig(iterations=2)
    own = sample_free_init(tiny_backbone, "a fox", sampler_config, twice, progress=False).latents
    ddim = sample_free_init(tiny_backbone, "a fox", sampler_config, twice, progress=False,
                            make_scheduler=scheduler_factory(tiny_backbone, "ddim")).latents
    with_ddpm = sample_free_init(tiny_backbone, "a fox", sampler_config, twice, progress=False, make_scheduler=ddpm)
    assert torch.equal(ddim, own) and not torch.allclose(with_ddpm.latents, own)
    assert len(with_ddpm.free_init["passes"]) == 2 and "make_scheduler" not in vars(tiny_backbone)


@pytest.fixture
def recorded_starts(monkeypatch):
    """The x_T each FreeInit pass samples from, recorded; (starts, the unpatched ``sample``)."""
    import mpcore.sampling as sampling

    starts = []
    real_sample = sampling.sample

    def recording_sample(*args, latents=None, **kwargs):
        starts.append(latents.clone())
        return real_sample(*args, latents=latents, **kwargs)

    monkeypatch.setattr(sampling, "sample", recording_sample)
    return starts, real_sample


def test_second_start_keeps_low_frequencies_of_diffused_first_result(tiny_backbone, sampler_config, recorded_starts):
    """x_T of pass 2 = the diffused pass-1 result inside the filter, fresh noise outside it."""
    starts, real_sample = recorded_starts

    free_init = FreeInitConfig(iterations=2, method="ideal", spatial_stop_frequency=0.5, temporal_stop_frequency=0.5)
    sample_free_init(tiny_backbone, "a fox", sampler_config, free_init, progress=False)
    first_result = real_sample(tiny_backbone, "a fox", sampler_config, progress=False, latents=starts[0]).latents
    scheduler = tiny_backbone.make_scheduler()
    scheduler.set_timesteps(sampler_config.steps)
    diffused = diffuse_to_start(tiny_backbone.noise_schedule(scheduler), first_result, starts[0])

    def spectrum(x):
        return torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-3, -2, -1)), dim=(-3, -2, -1))

    keep = low_pass_filter(tuple(diffused.shape), free_init, diffused.device)[0, 0] > 0.5
    assert 0 < keep.sum() < keep.numel()  # the filter keeps some frequencies and replaces others
    second, target = spectrum(starts[1]), spectrum(diffused)
    assert torch.allclose(second[..., keep], target[..., keep], atol=1e-3)
    assert not torch.allclose(second[..., ~keep], target[..., ~keep], atol=1e-1)  # high ones: fresh noise


def test_mix_keeps_everything_with_an_all_pass_filter():
    x, n = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4)
    assert torch.allclose(mix_frequencies(x, n, torch.ones(1, 2, 3, 4, 4)), x, atol=1e-5)
    assert torch.allclose(mix_frequencies(x, n, torch.zeros(1, 2, 3, 4, 4)), n, atol=1e-5)


def test_guided_passes_restart_the_token_and_record_each_pass(tiny_backbone, sampler_config, motion_config,
                                                              flow_estimator, discriminator):
    from mpcore.motionprompt import MotionPrompt

    guidance = MotionPrompt(motion_config, flow_estimator, discriminator)
    result = sample_free_init(tiny_backbone, "a fox", sampler_config, FreeInitConfig(iterations=2), guidance,
                              progress=False)
    passes = result.free_init["passes"]
    assert [p["iteration"] for p in passes] == [0, 1]
    assert all("guidance" in p for p in passes)
    # both passes optimized the token away from its init word, each from the init word again
    assert all(p["guidance"]["final_cosine"][0] < 1.0 for p in passes)
    assert result.guidance["trace"] and torch.isfinite(result.latents).all()


def test_each_guided_pass_is_a_fresh_guided_run_from_its_start(tiny_backbone, sampler_config, motion_config,
                                                                flow_estimator, discriminator, recorded_starts):
    """The token restarts from its init word every pass (README "FreeInit"): pass 2 of a guided FreeInit
    run equals a NEW MotionPrompt sampling from pass 2's x_T. Carrying pass 1's optimized token over (or
    its optimizer state) makes them differ."""
    from mpcore.motionprompt import MotionPrompt

    starts, real_sample = recorded_starts
    guidance = MotionPrompt(motion_config, flow_estimator, discriminator)
    result = sample_free_init(tiny_backbone, "a fox", sampler_config, FreeInitConfig(iterations=2), guidance,
                              progress=False)
    assert result.free_init["passes"][0]["guidance"]["final_cosine"][0] < 1.0  # pass 1 did move its token
    fresh = real_sample(tiny_backbone, "a fox", sampler_config, MotionPrompt(motion_config, flow_estimator, discriminator),
                        progress=False, latents=starts[1])
    torch.testing.assert_close(result.latents, fresh.latents, rtol=0, atol=0)
    assert result.guidance["final_cosine"] == fresh.guidance["final_cosine"]


def test_invalid_settings_and_flow_matching_refused(tiny_backbone, sampler_config):
    with pytest.raises(ConfigError, match="free_init method"):
        sample_free_init(tiny_backbone, "a", sampler_config, FreeInitConfig(iterations=2, method="box"))
    with pytest.raises(ConfigError, match="spatial_stop_frequency"):
        FreeInitConfig(iterations=2, spatial_stop_frequency=0).validate()
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    config = dict(tiny_backbone.make_scheduler().config)
    tiny_backbone.prediction_type = "flow_matching"  # x_1 is pure noise: sigma = 1 at the start
    tiny_backbone.make_scheduler = lambda: FlowMatchEulerDiscreteScheduler(shift=3.0)
    with pytest.raises(ConfigError, match="--free-init.*keeps 0 of a sample"):
        sample_free_init(tiny_backbone, "a", sampler_config, FreeInitConfig(iterations=2))
    tiny_backbone.prediction_type = "v_prediction"

    tiny_backbone.make_scheduler = lambda: DDIMScheduler.from_config(config, rescale_betas_zero_snr=True)
    with pytest.raises(ConfigError, match="zero terminal SNR"):  # x_T would keep nothing of the sample
        sample_free_init(tiny_backbone, "a", sampler_config, FreeInitConfig(iterations=2))


def test_cli_run_tiny_free_init_two_passes(tmp_path):
    from click.testing import CliRunner

    from mpcore.cli.main import build_cli

    out = tmp_path / "x.mp4"
    result = CliRunner().invoke(build_cli(), ["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox",
                                      "--frames", "4", "--height", "32", "--width", "32", "--steps", "4",
                                      "--free-init", "2", "--free-init-method", "gaussian", "--compare",
                                      "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["free_init"]["iterations"] == 2 and manifest["free_init"]["method"] == "gaussian"
    assert len(manifest["free_init"]["videos"]["motionprompt"]["passes"]) == 2
    assert len(manifest["free_init"]["videos"]["baseline"]["passes"]) == 2
    assert manifest["scheduler"] == "the backbone's own"
    assert out.is_file() and out.with_name("x_compare.mp4").is_file()


def test_generate_refuses_resuming_a_folder_with_other_free_init(tmp_path):
    """FreeInit is part of a folder's settings; a folder written without it still resumes without it."""
    from click.testing import CliRunner

    from mpcore.cli.main import build_cli

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    small = ["generate", "--backbone", "animatediff", "--model", "tiny", "--frames", "4", "--height", "32", "--width",
             "32", "--steps", "2", "--no-progress", "--guidance", "none", "--prompts", str(prompts),
             "--out", str(tmp_path / "out")]
    first = CliRunner().invoke(build_cli(), [*small, "--free-init", "2"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(build_cli(), [*small, "--free-init", "2"])
    assert again.exit_code == 0 and "already complete" in again.output
    other = CliRunner().invoke(build_cli(), small)
    assert other.exit_code != 0 and "free_init" in other.output


def test_free_init_options_fill_only_what_is_given_and_zero_is_refused():
    """--free-init 0 was silently read as 1 (a falsy value fell back to the default); options not given take
    FreeInitConfig's own defaults, not copies of them."""
    from mpcore.cli.common import run_options
    from mpcore.jobs.options import OptionError
    from mpcore.jobs.setup import prepare

    config = run_options({"free_init": 2, "free_init_order": 2}).free_init
    assert (config.iterations, config.order) == (2, 2)
    assert config.method == FreeInitConfig.method and config.spatial_stop_frequency == FreeInitConfig.spatial_stop_frequency
    with pytest.raises(OptionError, match="iterations=0"):
        prepare(run_options({"free_init": 0, "model": "tiny", "guidance": "none"}))
