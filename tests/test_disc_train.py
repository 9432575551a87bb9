"""`mpcore disc train/eval` on tiny flow caches and the tiny ViT discriminator (seconds, offline).

Easy data: real = smooth translation flows (one random vector per pair, plus a little noise), fake =
white-noise flows; 16 x 16, a few videos per cache. The tiny ViT learns this with SGD in a few
epochs when its input scale is raised (``flow_scale=1``) and lr is 0.01.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.disc.data import DiscTrainError, open_caches, split_by_video
from mpcore.disc.evaluate import roc_auc
from mpcore.disc.train import TrainConfig, train_discriminator
from mpcore.flows.cache import FlowCache, FlowCacheWriter, VideoEntry
from mpcore.interfaces import DiscriminatorSpec

ARCH = ["--arch", "preset=tiny", "--arch", "flow_scale=1"]
ARCH_OPTIONS = {"preset": "tiny", "flow_scale": "1"}
FAST = ["--no-pretrained", "--epochs", "3", "--batch-size", "4", "--lr", "0.01", "--no-progress"]
FAST_CONFIG = TrainConfig(epochs=3, batch_size=4, lr=0.01)



def make_cache(path: Path, kind: str, videos: int, pairs: int, seed: int, size: int = 16) -> Path:
    generator = torch.Generator().manual_seed(seed)
    with FlowCacheWriter(path, {"label": kind, "size": [size, size]}) as writer:
        for v in range(videos):
            flows = []
            for _ in range(pairs):
                if kind == "real":  # one translation per pair: smooth
                    shift = (torch.rand(2, generator=generator) - 0.5) * 8
                    flow = shift.view(2, 1, 1).expand(2, size, size) + 0.1 * torch.randn(2, size, size, generator=generator)
                else:  # white noise
                    flow = torch.randn(2, size, size, generator=generator) * 4
                flows.append(flow)
            writer.add(VideoEntry(f"{kind}{v:02d}", f"/videos/{kind}{v:02d}.mp4", frames=16), torch.stack(flows),
                       list(range(pairs)), [i + 1 for i in range(pairs)])
    return path


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    return {
        "real": make_cache(root / "real", "real", videos=6, pairs=12, seed=0),
        "fake": make_cache(root / "fake", "fake", videos=6, pairs=12, seed=1),
        "real_test": make_cache(root / "real_test", "real", videos=3, pairs=8, seed=10),
        "fake_test": make_cache(root / "fake_test", "fake", videos=3, pairs=8, seed=11),
    }


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


def train_args(caches, out, *extra):
    return ["disc", "train", "--real", str(caches["real"]), "--fake", str(caches["fake"]), "--out", str(out),
            *ARCH, *FAST, *extra]


def vit_spec():
    return plugins.get("discriminator", "vit").spec


def comparable(log):
    """The log without what legitimately differs between two runs: times, paths, command."""
    return {k: v for k, v in log.items() if k not in ("created", "timings", "sessions", "command", "outputs")}


# ---------------------------------------------------------------------------------------------------
# split and metrics


def test_split_by_video_never_shares_a_video_and_reports_counts(tmp_path):
    real = make_cache(tmp_path / "r", "real", videos=7, pairs=3, seed=0)
    fake = make_cache(tmp_path / "f", "fake", videos=5, pairs=4, seed=1)
    loaded = open_caches(real, fake)
    split = split_by_video(loaded, 0.3, seed=0)
    for label, name in ((1, "real"), (0, "fake")):
        cache = loaded[label]
        train_videos = {int(cache.video_index[p]) for lab, p in split.train if lab == label}
        val_videos = {int(cache.video_index[p]) for lab, p in split.val if lab == label}
        assert train_videos and val_videos and not train_videos & val_videos
        assert train_videos | val_videos == set(range(len(cache.videos)))
        summary = split.summary[name]
        assert summary["train"]["videos"] == len(train_videos) and summary["val"]["videos"] == len(val_videos)
        assert summary["train"]["pairs"] + summary["val"]["pairs"] == len(cache)
        assert sorted(summary["val_video_ids"]) == sorted(cache.videos[v].id for v in val_videos)
    assert split.summary["real"]["val"]["videos"] == 2 and split.summary["fake"]["val"]["videos"] == 2  # round(0.3 n)
    # deterministic in the seed
    assert split_by_video(loaded, 0.3, seed=0).val == split.val
    # at least one validation video once a cache has two; a one-video cache cannot be split
    two = make_cache(tmp_path / "two", "fake", videos=2, pairs=2, seed=2)
    one = make_cache(tmp_path / "one", "real", videos=1, pairs=2, seed=3)
    small = split_by_video(open_caches(one, two), 0.05, seed=0)
    assert small.summary["fake"]["val"]["videos"] == 1 and small.summary["real"]["val"]["videos"] == 0
    assert any("cannot be split" in w for w in small.warnings) and any("only one class" in w for w in small.warnings)


def test_roc_auc_is_the_exact_rank_statistic_with_ties():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # 3 of 4 (pos, neg) pairs ordered
    assert roc_auc([0.5, 0.5, 0.9, 0.1], [1, 0, 1, 0]) == 0.875  # (1 + 0.5 tie + 1 + 1) / 4
    assert roc_auc([1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1]) == 0.5
    assert roc_auc([3.0, 1.0], [1, 0]) == 1.0 and roc_auc([3.0, 1.0], [0, 1]) == 0.0
    assert roc_auc([1.0, 2.0], [1, 1]) is None and roc_auc([float("nan"), 1.0], [0, 1]) is None
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(brute, abs=1e-12)


def test_config_validation_names_field_and_range():
    with pytest.raises(DiscTrainError, match=r"epochs = 0; allowed: an integer >= 1"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(DiscTrainError, match=r"val_fraction = 1.0; allowed: a number in \[0, 1\)"):
        TrainConfig(val_fraction=1.0).validate()
    with pytest.raises(DiscTrainError, match="momentum"):
        TrainConfig(momentum=1.5).validate()


# ---------------------------------------------------------------------------------------------------
# training


def test_train_learns_the_easy_data_and_writes_outputs(tmp_path, caches):
    out = tmp_path / "run" / "disc.safetensors"
    result = invoke(train_args(caches, out))
    assert result.exit_code == 0, result.output
    assert "class balance real 50% / fake 50%" in result.output and "split by video" in result.output
    assert "best epoch" in result.output and "s/epoch" in result.output
    log = json.loads((tmp_path / "run" / "disc_log.json").read_text())
    rows = log["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and log["finished"] is True
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2, rows
    best = log["best"]
    assert best["val_loss"] < 0.4 and best["val_accuracy"] >= 0.85 and best["val_auc"] >= 0.9, best
    assert best["val_loss"] == min(r["val_loss"] for r in rows)
    assert log["data"]["split"]["real"]["val"] == {"videos": 1, "pairs": 12}
    assert log["data"]["class_balance"]["train"]["real"]["pairs"] == 60
    assert log["config"]["lr"] == 0.01 and log["discriminator"]["arch_options"] == ARCH_OPTIONS
    assert len(log["timings"]["epoch_s"]) == 3
    for name in ("disc.safetensors", "disc.json", "disc_curves.png", "disc.ckpt.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert (tmp_path / "run" / "disc_curves.png").stat().st_size > 5000
    assert not list((tmp_path / "run").glob(".*tmp*")), "temp files left behind"
    # the kept weights are the best epoch's, loadable through the plugin's spec
    disc = vit_spec().load(out, "cpu")
    flows = FlowCache(caches["real"]).flows([0, 1, 2])
    assert disc(flows).shape == (3,)


def test_resume_after_kill_is_bit_identical(tmp_path, caches):
    spec = vit_spec()
    whole = tmp_path / "whole" / "disc.safetensors"
    train_discriminator(spec, caches["real"], caches["fake"], whole, FAST_CONFIG, ARCH_OPTIONS, pretrained=False,
                        progress=False, echo=lambda _: None)

    class Killed(Exception):
        pass

    def kill_after_first(epoch, metrics):
        if epoch == 1:
            raise Killed

    parts = tmp_path / "parts" / "disc.safetensors"
    with pytest.raises(Killed):
        train_discriminator(spec, caches["real"], caches["fake"], parts, FAST_CONFIG, ARCH_OPTIONS, pretrained=False,
                            progress=False, echo=lambda _: None, on_epoch_end=kill_after_first)
    assert json.loads(parts.with_name("disc_log.json").read_text())["finished"] is False
    result = invoke(train_args(caches, parts, "--resume"))
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "after epoch 1 of 3" in result.output
    # the kept weights (tensors bit-identical; not the file bytes: safetensors writes its metadata
    # map in a random order)
    kept_whole, kept_parts = load_file(str(whole)), load_file(str(parts))
    assert kept_whole.keys() == kept_parts.keys()
    assert all(torch.equal(kept_whole[key], kept_parts[key]) for key in kept_whole)
    assert whole.with_suffix(".json").read_text() == parts.with_suffix(".json").read_text()
    whole_state = torch.load(whole.with_name("disc.ckpt.pt"), weights_only=True)
    parts_state = torch.load(parts.with_name("disc.ckpt.pt"), weights_only=True)
    for key, tensor in whole_state["model"].items():  # the last epoch's weights
        assert torch.equal(tensor, parts_state["model"][key]), key
    whole_log = json.loads(whole.with_name("disc_log.json").read_text())
    parts_log = json.loads(parts.with_name("disc_log.json").read_text())
    assert comparable(whole_log) == comparable(parts_log)
    assert [s["start_epoch"] for s in parts_log["sessions"]] == [0, 1]
    # a finished run resumed says so and succeeds
    again = invoke(train_args(caches, parts, "--resume"))
    assert again.exit_code == 0 and "already finished" in again.output


def test_resume_refuses_changes_and_fresh_run_refuses_to_overwrite(tmp_path, caches):
    out = tmp_path / "disc.safetensors"
    first = invoke(train_args(caches, out, "--epochs", "1"))
    assert first.exit_code == 0, first.output
    refused = invoke(train_args(caches, out))
    assert refused.exit_code != 0 and "--resume" in refused.output and "--overwrite" in refused.output
    changed = invoke(train_args(caches, out, "--lr", "0.02", "--resume"))
    assert changed.exit_code != 0
    assert "config lr: checkpoint 0.01, now 0.02" in changed.output
    other_cache = invoke(["disc", "train", "--real", str(caches["real"]), "--fake", str(caches["fake_test"]),
                          "--out", str(out), *ARCH, *FAST, "--resume"])
    assert other_cache.exit_code != 0 and "--fake cache" in other_cache.output
    other_arch = invoke(train_args(caches, out, "--arch", "head_hidden=16", "--resume"))
    assert other_arch.exit_code != 0 and "--arch head_hidden" in other_arch.output
    # more epochs continue the same run
    more = invoke(train_args(caches, out, "--epochs", "2", "--resume"))
    assert more.exit_code == 0, more.output
    assert [r["epoch"] for r in json.loads((tmp_path / "disc_log.json").read_text())["epochs"]] == [1, 2]
    fresh = invoke(train_args(caches, out, "--epochs", "1", "--overwrite"))
    assert fresh.exit_code == 0, fresh.output
    assert len(json.loads((tmp_path / "disc_log.json").read_text())["epochs"]) == 1
    assert invoke(train_args(caches, tmp_path / "new.safetensors", "--resume")).exit_code != 0


def test_cheap_checks_come_before_any_model(tmp_path, caches, monkeypatch):
    import mp_plugin_vit

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(mp_plugin_vit.discriminator, "build_discriminator", refuse)
    missing = invoke(["disc", "train", "--real", str(tmp_path / "nope"), "--fake", str(caches["fake"]),
                      "--out", str(tmp_path / "d.safetensors"), *ARCH, *FAST])
    assert missing.exit_code != 0 and "--real" in missing.output and "not a flow cache" in missing.output
    suffix = invoke(train_args(caches, tmp_path / "d.pt"))
    assert suffix.exit_code != 0 and ".safetensors" in suffix.output
    bad_config = invoke(train_args(caches, tmp_path / "d.safetensors", "--val-fraction", "1.5"))
    assert bad_config.exit_code != 0 and "val_fraction" in bad_config.output
    bad_arch = invoke(train_args(caches, tmp_path / "d.safetensors", "--arch", "img_size=big"))
    assert bad_arch.exit_code != 0 and "img_size" in bad_arch.output
    unknown = invoke(train_args(caches, tmp_path / "d.safetensors", "--type", "nope"))
    assert unknown.exit_code != 0 and "unknown discriminator 'nope'" in unknown.output
    spec = DiscriminatorSpec(name="frozen-only", load=lambda path, device: None)
    with pytest.raises(DiscTrainError, match="no build/save"):
        train_discriminator(spec, caches["real"], caches["fake"], tmp_path / "x.safetensors")
    assert not list(tmp_path.glob("*.safetensors"))


def test_pretrained_offline_says_what_to_do(tmp_path, caches, monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("Name or service not known (simulated: no network)")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", offline)
    out = tmp_path / "d.safetensors"
    result = invoke(["disc", "train", "--real", str(caches["real"]), "--fake", str(caches["fake"]), "--out", str(out),
                     "--arch", "preset=cpu", "--epochs", "1", "--no-progress"])
    assert result.exit_code != 0
    assert "pass --no-pretrained, or point to a local file with --arch pretrained_file=PATH" in result.output
    assert not out.exists() and not out.with_name("d.ckpt.pt").exists()
    tiny = invoke(train_args(caches, out)[:-len(FAST)] + ["--epochs", "1", "--no-progress"])  # tiny + pretrained
    assert tiny.exit_code != 0 and "--no-pretrained" in tiny.output


# ---------------------------------------------------------------------------------------------------
# using the trained discriminator


@pytest.fixture(scope="module")
def trained(tmp_path_factory, caches):
    out = tmp_path_factory.mktemp("trained") / "disc.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_discriminator(vit_spec(), caches["real"], caches["fake"], out, FAST_CONFIG, ARCH_OPTIONS,
                            pretrained=False, progress=False, echo=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return out


def test_eval_json_on_held_out_caches(trained, caches):
    result = invoke(["disc", "eval", "--disc", str(trained), "--real", str(caches["real_test"]),
                     "--fake", str(caches["fake_test"]), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["discriminator"] == {"type": "vit", "path": str(trained)}
    assert report["count"] == 48 and report["count_real"] == 24 and report["count_fake"] == 24
    assert report["real_cache"]["videos"] == 3 and report["fake_cache"]["pairs"] == 24
    assert report["accuracy"] >= 0.85 and report["auc"] >= 0.9, report
    assert report["mean_logit_real"] > 0 > report["mean_logit_fake"]
    assert {"accuracy_real", "accuracy_fake", "balanced_accuracy", "loss"} <= set(report)
    table = invoke(["disc", "eval", "--disc", str(trained), "--real", str(caches["real_test"]),
                    "--fake", str(caches["fake_test"]), "--no-progress"])
    assert table.exit_code == 0 and "ROC-AUC" in table.output and "mean logit" in table.output
    missing = invoke(["disc", "eval", "--disc", str(trained.with_name("none.safetensors")), "--real",
                      str(caches["real_test"]), "--fake", str(caches["fake_test"])])
    assert missing.exit_code != 0 and "mpcore disc train" in missing.output


def test_trained_discriminator_guides_mpcore_run(trained, tmp_path):
    out = tmp_path / "fox.mp4"
    result = invoke(["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "x", "--frames", "4",
                     "--height", "32", "--width", "32", "--steps", "2", "--no-progress",
                     "--discriminator", str(trained), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["discriminator"]["path"] == str(trained)
    assert manifest["discriminator"]["source"] == str(trained) and manifest["discriminator"]["is_random_init"] is False
    assert manifest["discriminator"]["flow_scale"] == 1.0


# ---------------------------------------------------------------------------------------------------
# damaged data and failed training: a clear error, no claim of weights that were not written


def test_non_finite_flows_stop_training_naming_cache_and_shard(tmp_path, caches):
    bad = tmp_path / "nan_real"
    with FlowCacheWriter(bad, {"label": "real", "size": [16, 16]}, shard_size=24) as writer:
        for v in range(4):
            flows = torch.zeros(12, 2, 16, 16)
            if v == 3:
                flows[5, 0, 3, 3] = float("nan")
            writer.add(VideoEntry(f"real{v:02d}", f"/videos/real{v:02d}.mp4", frames=16), flows, list(range(12)),
                       [i + 1 for i in range(12)])
    out = tmp_path / "run" / "disc.safetensors"
    result = invoke(["disc", "train", "--real", str(bad), "--fake", str(caches["fake"]), "--out", str(out), *ARCH,
                     *FAST, "--epochs", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"flow cache {bad}: shard shard-00001.safetensors holds non-finite flows" in result.output
    assert "first pair 41 (video 'real03')" in result.output and "wrote" not in result.output
    assert not out.exists()


def test_truncated_shard_is_an_error_naming_cache_and_shard(tmp_path, caches):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for file in Path(caches["fake"]).iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    shard = damaged / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:200])
    result = invoke(train_args({**caches, "fake": damaged}, tmp_path / "run" / "disc.safetensors"))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"--fake: flow cache {damaged}: shard shard-00000.safetensors cannot be read" in result.output
    assert "Traceback" not in result.output


def test_diverging_training_is_an_error_not_a_nan_success(tmp_path, caches):
    out = tmp_path / "run" / "disc.safetensors"
    result = invoke(train_args(caches, out, "--lr", "1e30", "--epochs", "2"))
    assert result.exit_code == 1, result.output
    assert "the training loss became nan in epoch 1" in result.output and "Lower --lr" in result.output
    assert "wrote" not in result.output and not out.exists()


def test_a_run_that_never_improved_claims_no_weights(tmp_path, caches, monkeypatch):
    from mpcore.disc import train as disc_train

    real_metrics = disc_train.logit_metrics
    monkeypatch.setattr(disc_train, "logit_metrics", lambda *a: {**real_metrics(*a), "loss": float("nan")})
    out = tmp_path / "run" / "disc.safetensors"
    result = invoke(train_args(caches, out, "--epochs", "1"))
    assert result.exit_code == 1, result.output
    assert "no epoch improved on validation" in result.output and "no weights were written" in result.output
    assert f"wrote {out}" not in result.output and not out.exists()
    log = json.loads((tmp_path / "run" / "disc_log.json").read_text())
    assert log["best"] is None and "weights" not in log["outputs"] and "config" not in log["outputs"]


def test_shards_and_weights_follow_the_umask(tmp_path, caches):
    """safetensors creates files 0600; every output gets 0666 minus the umask like the others."""
    import os

    old = os.umask(0o022)
    try:
        cache = make_cache(tmp_path / "cache", "real", videos=1, pairs=2, seed=0)
        out = tmp_path / "run" / "disc.safetensors"
        result = invoke(train_args(caches, out, "--epochs", "1"))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for path in [cache / "shard-00000.safetensors", out, out.with_suffix(".json"), tmp_path / "run" / "disc_log.json"]:
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path
