"""mpcore diagnose steps: where the estimate carries motion and where the discriminator responds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mpcore.analysis import diagnose
from mp_plugin_animatediff import PAPER_MOTIONPROMPT_DEFAULTS
from mpcore.config import MotionPromptConfig, SamplerConfig
from mpcore.testing import DifferenceFlow, LinearDiscriminator


def test_roc_auc():
    assert diagnose.roc_auc([3, 4], [1, 2]) == 1.0
    assert diagnose.roc_auc([1, 2], [3, 4]) == 0.0
    assert diagnose.roc_auc([1, 1], [1, 1]) == 0.5
    assert diagnose.roc_auc([2, 0], [1]) == 0.5
    assert math.isnan(diagnose.roc_auc([], [1]))


def test_flow_agreement_of_a_flow_with_itself_and_its_opposite():
    flow = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    same = diagnose.flow_agreement(flow, flow)
    assert same["cosine"] == pytest.approx([1.0] * 3) and same["epe"] == pytest.approx([0.0] * 3)
    assert same["magnitude_ratio"] == pytest.approx([1.0] * 3)
    opposite = diagnose.flow_agreement(-2 * flow, flow)
    assert opposite["cosine"] == pytest.approx([-1.0] * 3) and opposite["magnitude_ratio"] == pytest.approx([2.0] * 3)


def test_parse_estimates():
    assert diagnose.parse_estimates("tweedie,rollout3") == {"tweedie": 1, "rollout3": 3}
    for bad in ("rollout", "rollout0", "ddim2", ""):
        with pytest.raises(ValueError):
            diagnose.parse_estimates(bad)


def _result(per_step: dict[str, list[tuple[float, float]]], checked: list[int], steps: int = 25, calls=None) -> dict:
    return {"checked_steps": checked, "sampler": {"steps": steps},
            "estimates": calls or {name: int(name[7:]) if name.startswith("rollout") else 1 for name in per_step},
            "per_step": {name: [{"step": s, "motion_cosine": c, "auc": a} for s, (c, a) in zip(checked, rows)]
                         for name, rows in per_step.items()}}


def test_recommend_takes_the_earliest_run_where_motion_and_auc_both_hold():
    checked = [0, 2, 4, 6, 8]
    weak, good = (0.1, 0.5), (0.5, 0.8)
    result = _result({"tweedie": [weak, weak, weak, good, good], "rollout3": [weak, good, good, weak, good]}, checked)
    rec = diagnose.recommend(result)
    assert rec["estimate"] == "rollout3" and rec["opt_range"] == [2, 6]  # steps 2 and 4 measured: up to the next checked
    assert rec["settings"] == {"estimate": "rollout", "rollout_steps": 3, "opt_range": "2,6"}
    assert rec["qualifying"] == {"tweedie": [6, 8], "rollout3": [2, 4, 8]}
    assert diagnose.recommend(result, max_length=1)["opt_range"] == [2, 3]
    # a high cosine without discrimination (or the reverse) does not qualify
    assert diagnose.recommend(_result({"tweedie": [(0.9, 0.5), (0.1, 0.9)]}, [0, 1]))["opt_range"] is None
    # ties on the start go to fewer model calls
    tie = diagnose.recommend(_result({"rollout2": [good, good], "tweedie": [good, weak]}, [3, 4]))
    assert tie["estimate"] == "tweedie" and tie["opt_range"] == [3, 4]


class _Oracle:
    """A perfect denoiser of one known clean latent video x0: eps = (x_t - sqrt(a) x0) / sqrt(1 - a)."""

    def __init__(self, backbone, clean):
        self.backbone, self.clean = backbone, clean
        self.alphas = backbone.make_scheduler().alphas_cumprod

    def __call__(self, latents, t, cond):
        a = self.alphas[int(t)]
        return (latents - a.sqrt() * self.clean) / (1 - a).sqrt()


@pytest.mark.parametrize("guidance_decoder", ["full", "tiny"])
def test_a_perfect_estimate_keeps_all_the_motion(tiny_backbone, guidance_decoder):
    """Planted: an identity 'VAE' and an oracle denoiser, so every estimate IS the clean clip: cosine 1,
    EPE 0, the same discriminator verdict as the clean clip's, at every step and for every estimate.
    A run configured with the tiny guidance decoder measures the same (diagnose decodes through the
    backbone's VAE; it once refused such a config)."""
    sampler = SamplerConfig(steps=5, frames=4, height=8, width=8, seed=0, cfg_scale=3.0)
    frames = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    backbone = tiny_backbone
    backbone.vae_scale_factor = 1
    backbone.latent_scale = lambda t=None: 1.0
    backbone.encode = lambda images: torch.cat([images, torch.zeros_like(images[:, :1])], dim=1)
    backbone.decode = lambda latents, checkpoint=False: latents[:, :3]
    backbone.predict = _Oracle(backbone, backbone.encode(frames).permute(1, 0, 2, 3).unsqueeze(0))
    motion = MotionPromptConfig(**PAPER_MOTIONPROMPT_DEFAULTS, guidance_decoder=guidance_decoder)
    clip = diagnose.Clip(frames=frames, caption="a fox")
    discriminator = LinearDiscriminator()
    result = diagnose.diagnose_steps(backbone, [clip], DifferenceFlow(), discriminator, sampler, motion, [0, 2, 4],
                                     {"tweedie": 1, "rollout3": 3}, pairs_per_clip=2, progress=False)
    clean_logit = result["reference"]["logit_real_clean"]
    assert result["reference"]["vae_motion_cosine"] == pytest.approx(1.0, abs=1e-5)
    for name in ("tweedie", "rollout3"):
        rows = result["per_step"][name]
        assert [r["step"] for r in rows] == [0, 2, 4]
        for row in rows:
            assert row["motion_cosine"] == pytest.approx(1.0, abs=1e-4)
            assert row["epe"] == pytest.approx(0.0, abs=1e-3)
            assert row["magnitude_ratio"] == pytest.approx(1.0, abs=1e-4)
            assert row["logit_real"] == pytest.approx(clean_logit, abs=1e-4)
            assert len(row["values"]["cosine"]) == 2  # two pairs of one clip


def _write_clips(folder, count, frames=4, size=32):
    from mpcore.io.video import write_video

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        video = np.zeros((frames, size, size, 3), np.uint8)
        for f in range(frames):  # a bright square moving right
            video[f, 10:18, 4 + 3 * f: 12 + 3 * f] = 230
        video += rng.integers(0, 20, video.shape, dtype=np.uint8)
        write_video(video, folder / f"clip{i}.mp4", fps=8)


def test_diagnose_command_on_the_tiny_model(tmp_path):
    from mpcore.cli.main import build_cli

    _write_clips(tmp_path / "real", 2)
    (tmp_path / "captions.txt").write_text("a square moving right\na white square sliding right\n")
    out = tmp_path / "diag"
    result = CliRunner().invoke(build_cli(), [
        "diagnose", "steps", "--model", "tiny", "--videos", str(tmp_path / "real"), "--prompts",
        str(tmp_path / "captions.txt"), "--frames", "4", "--height", "32", "--width", "32", "--steps", "4",
        "--check-steps", "1-3", "--estimates", "tweedie,rollout2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "diagnose.json").read_text())
    assert (out / "diagnose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["schema_version"] == diagnose.SCHEMA_VERSION and data["clips"] == 2
    assert data["checked_steps"] == [1, 2, 3] and data["estimates"] == {"tweedie": 1, "rollout2": 2}
    for name in ("tweedie", "rollout2"):
        rows = data["per_step"][name]
        assert [r["step"] for r in rows] == [1, 2, 3]
        for row in rows:
            assert set(row) >= {"motion_cosine", "epe", "magnitude_ratio", "logit_real", "logit_own", "auc"}
            assert len(row["values"]["logit_real"]) == len(row["values"]["logit_own"]) == 2
            assert -1 <= row["motion_cosine"] <= 1 and 0 <= row["auc"] <= 1
    assert set(data["recommendation"]) >= {"estimate", "opt_range", "reason", "settings"}
    assert "recommended" in result.output or "no recommendation" in result.output


@pytest.mark.parametrize("args,message", [
    (["--prompts", "{captions1}"], "1 captions for 2 videos"),
    ([], "no caption for"),
    (["--prompts", "{captions2}", "--estimates", "ddim"], "unknown estimate"),
    (["--prompts", "{captions2}", "--check-steps", "0-99"], "steps must lie in"),
])
def test_diagnose_refuses_bad_input_before_loading(tmp_path, args, message):
    from mpcore.cli.main import build_cli

    _write_clips(tmp_path / "real", 2)
    (tmp_path / "c1.txt").write_text("one\n")
    (tmp_path / "c2.txt").write_text("one\ntwo\n")
    args = [a.format(captions1=tmp_path / "c1.txt", captions2=tmp_path / "c2.txt") for a in args]
    result = CliRunner().invoke(build_cli(), ["diagnose", "steps", "--model", "tiny", "--videos", str(tmp_path / "real"),
                                              "--steps", "4", "--out", str(tmp_path / "diag"), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "diag").exists()


def _trace(values_per_step: list[list[float]], skipped_last: bool = False) -> dict:
    trace = [{"step": 0, "optimized": False}]
    for i, values in enumerate(values_per_step):
        iterations = [{"disc": v, "skipped": False} for v in values]
        if skipped_last:
            iterations[-1]["skipped"] = True
        trace.append({"step": i + 1, "optimized": True, "iterations": iterations})
    return {"trace": trace}


def test_gate_measures_the_drop_of_the_discriminator_term():
    falling = [_trace([[5.0 + k, 4.5 + k, 4.0 + k], [4.0, 3.8, 3.6]]) for k in range(6)]
    result = diagnose.gate(falling, resamples=500)
    assert result["over_iterations"]["mean_drop"] == pytest.approx(np.mean([1.0, 0.4]))
    assert result["over_range"]["mean_drop"] == pytest.approx(np.mean([5.0 + k - 3.6 for k in range(6)]))
    assert result["passed"]
    rising = [_trace([[4.0, 4.5, 5.0 + k], [5.0, 5.5, 6.0]]) for k in range(6)]
    assert not diagnose.gate(rising, resamples=500)["passed"]
    assert diagnose.gate(rising, resamples=500)["over_iterations"]["mean_drop"] < 0
    # skipped iterations do not count: only the first two values remain
    assert diagnose.gate([_trace([[3.0, 2.0, 99.0]] * 2, skipped_last=True)], resamples=50)["over_iterations"]["mean_drop"] == 1.0


def test_gate_command_reads_manifests(tmp_path):
    from mpcore.cli.main import build_cli

    for k in range(4):
        (tmp_path / f"v{k}.json").write_text(json.dumps({"guidance": "motionprompt",
                                                         "result": _trace([[5.0, 4.0 - 0.1 * k], [3.0, 2.0]])}))
    (tmp_path / "generate.json").write_text("{}")
    result = CliRunner().invoke(build_cli(), ["diagnose", "gate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "gate: passed" in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.json").write_text(json.dumps({"guidance": "motionprompt",
                                                         "result": _trace([[1.0, 2.0], [1.0, 3.0]])}))
    assert CliRunner().invoke(build_cli(), ["diagnose", "gate", str(tmp_path / "bad")]).exit_code == 1
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(build_cli(), ["diagnose", "gate", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "no guided run manifests" in result.output


def test_gate_refuses_a_guidance_without_a_gate_quantity_in_one_line(tmp_path):
    """Issue 28: `diagnose gate` on a FlowMo folder crashed with KeyError 'disc' (its trace has no discriminator
    term); the spec says whether a guidance has a gate quantity, and FlowMo's has none."""
    from mpcore.cli.main import build_cli

    flowmo_trace = {"trace": [{"step": 0, "optimized": True, "iterations": [{"loss": 2.0}, {"loss": 1.0}]}]}
    (tmp_path / "p0000_s0000.json").write_text(json.dumps({"guidance": "flowmo", "result": flowmo_trace}))
    result = CliRunner().invoke(build_cli(), ["diagnose", "gate", str(tmp_path)])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "the flowmo guidance has no gate quantity" in result.output
    assert "Traceback" not in result.output and "KeyError" not in result.output
    assert result.output.strip().count("\n") == 0  # one line


@pytest.mark.parametrize("backbone_name", ["lavie", "videocrafter2", "dynamicrafter-512"])
def test_diagnose_runs_on_every_backbone(backbone_name):
    """The diagnostic uses only the backbone interface (encode, the scheduler, the estimate, decode),
    so it runs on each first-party backbone: LaVie, VideoCrafter2 and DynamiCrafter (v-prediction,
    image-conditioned, t-dependent latent scale)."""
    if backbone_name == "lavie":
        from mp_plugin_lavie.backbone import load

        backbone = load("tiny", seed=0)
    else:
        from mp_plugin_lvdm.backbone import load

        name, _, variant = backbone_name.partition("-")
        image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1 if variant else None
        backbone = load("tiny", seed=0, backbone=name, variant=variant or None, image=image)
    f = backbone.vae_scale_factor
    sampler = SamplerConfig(steps=4, frames=4, height=4 * f, width=4 * f, seed=0, cfg_scale=2.0)
    frames = torch.rand(4, 3, 4 * f, 4 * f, generator=torch.Generator().manual_seed(0)) * 2 - 1
    motion = MotionPromptConfig(**PAPER_MOTIONPROMPT_DEFAULTS)
    result = diagnose.diagnose_steps(backbone, [diagnose.Clip(frames, "a fox")], DifferenceFlow(), LinearDiscriminator(),
                                     sampler, motion, [1, 3], {"tweedie": 1, "rollout2": 2}, progress=False)
    for name in ("tweedie", "rollout2"):
        for row in result["per_step"][name]:
            assert math.isfinite(row["motion_cosine"]) and math.isfinite(row["logit_real"]) and math.isfinite(row["logit_own"])


def test_gate_prefers_the_probe_on_fixed_pairs():
    def probed(before, after, noisy_iterations):
        result = _trace([noisy_iterations, noisy_iterations])
        for entry in result["trace"][1:]:
            entry["probe"] = {"pairs": [(0, 1)], "disc_before": before, "disc_after": after}
        return result

    # the iterations (other pairs each time) rise, the probe on fixed pairs falls: the probe is what counts
    result = diagnose.gate([probed(5.0, 4.9 - 0.01 * k, [1.0, 9.0]) for k in range(8)], resamples=500)
    assert result["over_iterations"]["source"] == "probe"
    assert result["over_iterations"]["mean_drop"] == pytest.approx(np.mean([0.1 + 0.01 * k for k in range(8)]))
    assert result["over_iterations"]["ci"][0] > 0
