"""benchmarks/effect_protocol.toml and bench_effect's split between choosing (development) and claiming
(confirmation): the decision rule, the confirmation prompts, the registered-settings check, the refusals."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_effect  # noqa: E402

from mpcore.toy import world as toyworld  # noqa: E402


@pytest.fixture(scope="module")
def protocol():
    return bench_effect.load_protocol()


def _comparison(cis: dict[str, tuple[float, float]]) -> dict:
    return {"metrics": {name: {"ci": list(ci), "diff": sum(ci) / 2} for name, ci in cis.items()}}


NEUTRAL_CIS = {"flow_warp_error": (-0.1, 0.1), "temporal_flickering": (-0.1, 0.1), "presence": (-0.1, 0.1),
               "size_drift": (-0.1, 0.1), "color_drift": (-0.1, 0.1), "centroid_jerk": (-0.1, 0.1),
               "flow_spread": (-0.1, 0.1), "direction_agreement": (-0.1, 0.1), "fidelity": (-0.1, 0.1)}


def test_decision_counts_improvements_on_each_measures_better_side(protocol):
    decision = protocol["decision"]
    # lower warp error and higher flicker score are both improvements: confirmed
    two_better = {**NEUTRAL_CIS, "flow_warp_error": (-0.3, -0.1), "temporal_flickering": (0.01, 0.02)}
    verdict = bench_effect.decide(_comparison(two_better), decision)
    assert verdict["confirmed"] and verdict["improved"] == ["flow_warp_error", "temporal_flickering"]
    # the same CIs with the signs flipped are two measures WORSE: not confirmed
    flipped = {**NEUTRAL_CIS, "flow_warp_error": (0.1, 0.3), "temporal_flickering": (-0.02, -0.01)}
    verdict = bench_effect.decide(_comparison(flipped), decision)
    assert not verdict["confirmed"] and verdict["worse"] == ["flow_warp_error", "temporal_flickering"]
    assert verdict["improved"] == []


def test_decision_needs_two_improvements_none_worse_and_fidelity_kept(protocol):
    decision = protocol["decision"]
    one_better = {**NEUTRAL_CIS, "centroid_jerk": (-0.3, -0.1)}
    assert not bench_effect.decide(_comparison(one_better), decision)["confirmed"]
    two_better_one_worse = {**NEUTRAL_CIS, "centroid_jerk": (-0.3, -0.1), "size_drift": (-0.3, -0.1),
                            "color_drift": (0.1, 0.2)}
    verdict = bench_effect.decide(_comparison(two_better_one_worse), decision)
    assert not verdict["confirmed"] and verdict["worse"] == ["color_drift"]
    fidelity_lost = {**NEUTRAL_CIS, "centroid_jerk": (-0.3, -0.1), "size_drift": (-0.3, -0.1), "fidelity": (-0.2, -0.01)}
    verdict = bench_effect.decide(_comparison(fidelity_lost), decision)
    assert verdict["fidelity_worse"] and not verdict["confirmed"]
    missing = {k: v for k, v in NEUTRAL_CIS.items() if k != "presence"}
    with pytest.raises(ValueError, match="presence"):
        bench_effect.decide(_comparison(missing), decision)


def test_confirmation_prompts_are_fresh_cover_every_heldout_combination_and_are_fixed(protocol):
    scenes = bench_effect.confirmation_scenes(protocol)
    captions = [s.caption for s in scenes]
    assert len(captions) == protocol["confirmation"]["prompts"] == len(set(captions))
    development = {s.caption for s in bench_effect.heldout_scenes(protocol["confirmation"]["exclude_development_prompts"],
                                                                  protocol["development"]["prompt_seed"])}
    assert not development & set(captions)
    combos = {(c, s, m) for c in toyworld.COLORS for s in toyworld.SHAPES for m in toyworld.MOTIONS
              if toyworld.is_heldout_combo(c, s, m) and not (s == "circle" and m == "spinning")}
    assert {bench_effect.scene_combo(s) for s in scenes} == combos
    assert all(toyworld.is_heldout_combo(*bench_effect.scene_combo(s)) for s in scenes)
    assert [s.caption for s in bench_effect.confirmation_scenes(protocol)] == captions  # the same every time


def test_confirmation_seeds_and_development_seeds_do_not_overlap(protocol):
    from mpcore.jobs.generate import parse_seeds

    development = set(parse_seeds(protocol["development"]["seeds"]))
    confirmation = set(parse_seeds(protocol["confirmation"]["seeds"]))
    assert not development & confirmation
    assert len(confirmation) * protocol["confirmation"]["prompts"] >= 128
    for chosen in protocol["round"]:  # every registered round's seeds pass the freshness check
        assert len(parse_seeds(bench_effect.round_seeds(protocol, chosen))) * protocol["confirmation"]["prompts"] >= 128
    bench_effect.check_development_seeds("0-1", protocol)
    with pytest.raises(click.BadParameter, match="outside the development seeds"):
        bench_effect.check_development_seeds("1000", protocol)


def _manifest(folder: Path, name: str, motion: dict, disc_path: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"motionprompt": motion, "discriminator": {"path": str(disc_path)}}))


def test_registered_settings_check_stops_on_a_changed_default_or_discriminator(protocol, tmp_path):
    import hashlib

    arm = copy.deepcopy(bench_effect.registered_arm(protocol, "motionprompt"))
    disc = tmp_path / "disc.safetensors"
    disc.write_bytes(b"weights")
    arm["discriminator_sha256"] = hashlib.sha256(b"weights").hexdigest()
    _manifest(tmp_path / "ok", "p0000_s1000", dict(arm["settings"]), disc)
    assert bench_effect.check_registered_settings(tmp_path / "ok", arm) == 1
    _manifest(tmp_path / "lr", "p0000_s1000", {**arm["settings"], "lr": 0.01}, disc)
    with pytest.raises(click.ClickException, match="lr: registered 0.005, recorded 0.01"):
        bench_effect.check_registered_settings(tmp_path / "lr", arm)
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"retrained")
    _manifest(tmp_path / "disc", "p0000_s1000", dict(arm["settings"]), other)
    with pytest.raises(click.ClickException, match="discriminator"):
        bench_effect.check_registered_settings(tmp_path / "disc", arm)


def test_registered_arms_name_their_settings(protocol):
    names = [arm["name"] for arm in protocol["arm"]]
    assert len(names) == len(set(names)) and {"motionprompt", "flowmo"} <= set(names)
    for arm in protocol["arm"]:
        assert arm["settings"] and arm["guidance"] in ("motionprompt", "flowmo") and arm["registered"]
    with pytest.raises(click.BadParameter, match="registered: "):
        bench_effect.registered_arm(protocol, "tuned_on_the_confirmation_split")


@pytest.mark.parametrize("extra", [["-o", "lr=0.01"], ["--seeds", "1000"], ["--prompts", "8"], ["--smoke"],
                                   ["--format", "mp4"]])
def test_confirmation_refuses_settings_the_protocol_fixes(extra, tmp_path):
    result = CliRunner().invoke(bench_effect.main, ["--split", "confirmation", "--work", str(tmp_path), *extra])
    assert result.exit_code == 2 and "takes its settings from effect_protocol.toml" in result.output
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_development_refuses_confirmation_seeds_and_registered_arms(tmp_path):
    result = CliRunner().invoke(bench_effect.main, ["--seeds", "1000-1001", "--work", str(tmp_path)])
    assert result.exit_code == 2 and "outside the development seeds" in result.output
    result = CliRunner().invoke(bench_effect.main, ["--arm", "motionprompt", "--work", str(tmp_path)])
    assert result.exit_code == 2 and "--arm and --round name registered arms" in result.output
    assert not any(tmp_path.iterdir())


def test_rounds_register_known_arms_and_a_measured_format(protocol):
    arms = {arm["name"] for arm in protocol["arm"]}
    numbers = [r["number"] for r in protocol["round"]]
    assert numbers == sorted(set(numbers))
    for chosen in protocol["round"]:
        assert set(chosen["arms"]) <= arms and chosen["format"] in ("mp4", "frames") and chosen["registered"]
    assert bench_effect.confirmation_round(protocol, None)["number"] == max(numbers)
    assert bench_effect.confirmation_round(protocol, 1)["arms"] == ["motionprompt", "flowmo"]
    with pytest.raises(click.BadParameter, match="registered rounds"):
        bench_effect.confirmation_round(protocol, 99)


def test_confirmation_refuses_an_arm_outside_its_round(tmp_path):
    result = CliRunner().invoke(bench_effect.main, ["--split", "confirmation", "--round", "1", "--arm",
                                                    "motionprompt_exact_start", "--work", str(tmp_path)])
    assert result.exit_code == 2 and "not in round 1's arms" in result.output
    assert not any(tmp_path.iterdir())


def test_a_later_round_brings_fresh_seeds_or_shares_the_splits(protocol):
    later = copy.deepcopy(protocol)
    later["round"].append({"number": 8, "registered": "x", "format": "frames", "arms": ["motionprompt"],
                           "seeds": "1004-1005"})
    assert bench_effect.round_seeds(later, later["round"][-1]) == "1004-1005"
    assert bench_effect.round_seeds(later, later["round"][0]) == protocol["confirmation"]["seeds"]
    for stale in ("1001-1004", "5,1004", "1004"):  # the split's seed, a development seed, an earlier round's
        again = copy.deepcopy(later)
        again["round"].append({"number": 9, "registered": "x", "format": "frames", "arms": ["motionprompt"],
                               "seeds": stale})
        with pytest.raises(click.ClickException, match="fresh seeds"):
            bench_effect.round_seeds(again, again["round"][-1])
