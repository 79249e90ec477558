"""Study records: a committed record is a finished run, stale records are flagged, scale is identity,
selection follows each metric's direction, trends, computed chance levels."""

import json
from pathlib import Path

import pytest

from lightning_vlm.study.commands import run_commands
from lightning_vlm.study.layout import RunDir
from lightning_vlm.study.records import command_hash, record_path
from lightning_vlm.study.report import val_selected, write_report
from lightning_vlm.study.runner import StudyRunner
from lightning_vlm.study.spec import Run, expand, parse_spec
from lightning_vlm.study.stats import select_fraction

ROOT = Path(__file__).parents[1]
VQ = {"vq_vq": ["configs/smartwatch/vq_vq.yaml"]}


def spec_of(**extra):
    raw = {"name": "rec", "cells": VQ, "axes": {"cell": ["vq_vq"], "regime": ["mixed", "understanding_only"], "seed": [0, 1, 2]},
           "fractions": [0.5, 1.0], "scales": {"cpu": {"samples": 24}, "gpu": {"samples": 48}},
           "comparisons": [{"a": "mixed", "b": "understanding_only", "metric": "vqa/total"}], **extra}
    return parse_spec(raw, root=ROOT)


def fake_children(monkeypatch, value=lambda regime, seed, fraction, split: 0.5) -> list:
    """StudyRunner's children replaced by what fit and test leave behind; returns the (verb, split, fraction) called."""
    calls = []

    def fake_call(self, cmd, log_stem):
        folder = cmd[cmd.index("--trainer.default_root_dir") + 1] if "--trainer.default_root_dir" in cmd else str(Path(cmd[cmd.index("--ckpt") + 1]).parent)
        d = RunDir(Path(folder.removesuffix("/eval")))
        info = json.loads(d.run_json.read_text())
        if cmd[1] == "probe":
            calls.append(("probe", None, None))
            Path(cmd[cmd.index("--out") + 1]).write_text(json.dumps([{"attribute": "weather", "test_accuracy": 0.9 + 0.01 * info["seed"]}]))
            return 0, 1.0
        if cmd[1] == "fit":
            calls.append(("fit", None, None))
            for f in self.spec.fractions:
                d.fraction_ckpt(f).write_text("")
            return 0, 1.0
        ckpt = Path(cmd[cmd.index("--ckpt_path") + 1])
        split = "val" if ckpt.parent.name == "val" else "test"
        fraction = float(ckpt.stem.split("-")[1])
        calls.append(("test", split, fraction))
        v = value(info["regime"], info["seed"], fraction, split)
        ckpt.with_name(ckpt.stem + ".test_metrics.json").write_text(json.dumps({"test/vqa/total": v, "test/gen/fd_reader": 100 * v}))
        return 0, 1.0

    monkeypatch.setattr(StudyRunner, "_call", fake_call)
    return calls


def test_a_committed_record_makes_study_run_skip_its_run(tmp_path, monkeypatch):
    spec = spec_of()
    calls = fake_children(monkeypatch)
    run = expand(spec)[0]
    StudyRunner(spec, tmp_path / "session1", records=tmp_path / "studies", root=ROOT, log=lambda line: None).run_all([run])
    calls.clear()
    lines = []
    StudyRunner(spec, tmp_path / "session2", records=tmp_path / "studies", root=ROOT, log=lines.append).run_all([run])  # runs/ is gone
    assert calls == []
    assert "recorded already" in lines[1]


def edited_after_running(tmp_path, monkeypatch, rerun_stale: bool):
    """One run recorded, then its config edited; returns (the second runner's calls, its log, the record, the new hash)."""
    (tmp_path / "a.yaml").write_text("model: {init_args: {lr: 0.001}}\n")
    spec = parse_spec({"name": "h", "cells": {"c": ["a.yaml"]}, "axes": {"cell": ["c"]}, "fractions": [1.0],
                       "scales": {"cpu": {"samples": 8}}}, root=tmp_path)
    calls = fake_children(monkeypatch)
    run = expand(spec)[0]
    StudyRunner(spec, tmp_path / "runs", records=tmp_path / "studies", root=tmp_path, log=lambda line: None).run_all([run])
    (tmp_path / "a.yaml").write_text("model: {init_args: {lr: 0.002}}\n")
    calls.clear()
    lines = []
    StudyRunner(spec, tmp_path / "runs", records=tmp_path / "studies", root=tmp_path, rerun_stale=rerun_stale,
                log=lines.append).run_all([run])
    record = json.loads(record_path(tmp_path / "studies", run.name).read_text())
    return calls, lines, record, command_hash(run_commands(spec, run, tmp_path / "runs", tmp_path), tmp_path)


def test_a_record_of_other_configs_is_stale_and_not_rerun(tmp_path, monkeypatch):
    calls, lines, record, now = edited_after_running(tmp_path, monkeypatch, rerun_stale=False)
    assert calls == []
    assert "stale" in lines[1]
    assert record["command_hash"] != now


def test_rerun_stale_redoes_the_run_in_a_fresh_folder(tmp_path, monkeypatch):
    calls, lines, record, now = edited_after_running(tmp_path, monkeypatch, rerun_stale=True)
    assert calls[0] == ("fit", None, None)
    assert record["command_hash"] == now
    assert len(list((tmp_path / "runs").glob("c-mixed-s0-cpu.old-*"))) == 1  # the old run kept aside, not resumed from


def test_an_edited_config_changes_the_command_hash(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {init_args: {lr: 0.001}}\n")
    spec = parse_spec({"name": "h", "cells": {"c": ["a.yaml"]}, "axes": {"cell": ["c"]}, "scales": {"cpu": {"samples": 8}}}, root=tmp_path)
    run = expand(spec)[0]
    before = command_hash(run_commands(spec, run, "out", tmp_path), tmp_path)
    (tmp_path / "a.yaml").write_text("model: {init_args: {lr: 0.002}}\n")
    assert command_hash(run_commands(spec, run, "out", tmp_path), tmp_path) != before


def test_the_command_hash_does_not_depend_on_the_run_folder(tmp_path):
    spec = spec_of()
    run = expand(spec)[0]
    assert command_hash(run_commands(spec, run, "runs/a", ROOT), ROOT) == command_hash(run_commands(spec, run, "elsewhere/b", ROOT), ROOT)


def test_the_report_lists_stale_records_and_leaves_them_out(tmp_path, monkeypatch):
    spec = spec_of()
    fake_children(monkeypatch)
    runs = expand(spec)
    StudyRunner(spec, tmp_path / "runs", records=tmp_path / "studies", root=ROOT, log=lambda line: None).run_all(runs)
    hashes = {r.name: command_hash(run_commands(spec, r, "x", ROOT), ROOT) for r in runs}
    hashes[runs[0].name] = "f" * 16
    md = write_report(tmp_path / "studies", spec, {}, hashes)["md"].read_text()
    assert "**Stale records, left out**" in md and runs[0].name in md.split("Stale records")[1].splitlines()[0]


def test_scale_is_part_of_a_runs_identity():
    cpu, gpu = expand(spec_of()), expand(spec_of(scale="gpu"))
    assert cpu[0].name == "vq_vq-mixed-s0-cpu"
    assert gpu[0].name == "vq_vq-mixed-s0-gpu"


def test_selection_follows_the_metrics_own_direction_not_the_claims():
    spec = spec_of(comparisons=[{"a": "mixed", "b": "understanding_only", "metric": "gen/fd_reader", "expect": "higher"}])
    val = {0.5: {0: 120.0}, 1.0: {0: 80.0}}  # FD: lower is better, so 1.0 is chosen whatever the claim says
    test = {0.5: {0: 125.0}, 1.0: {0: 85.0}}
    assert val_selected(val, test, spec.better("gen/fd_reader")) == {0: (1.0, 85.0)}


def test_select_fraction_takes_the_later_of_a_tie():
    assert select_fraction({0.5: 0.9, 1.0: 0.9}) == 1.0


def test_test_is_scored_at_the_final_and_the_val_selected_fractions_only(tmp_path, monkeypatch):
    spec = spec_of(eval={"test_fractions": "final"}, fractions=[0.25, 0.5, 1.0])
    calls = fake_children(monkeypatch, value=lambda regime, seed, fraction, split: 1 - abs(fraction - 0.5))  # val peaks at 0.5
    StudyRunner(spec, tmp_path / "runs", root=ROOT, log=lambda line: None).run_all(expand(spec)[:1])
    assert sorted(f for verb, split, f in calls if split == "test") == [0.5, 1.0]


def test_a_trend_is_the_slope_of_the_paired_difference_over_misalignment(tmp_path, monkeypatch):
    spec = spec_of(axes={"cell": ["vq_vq"], "regime": ["mixed", "understanding_only"], "misalign": [0.0, 0.1, 0.2], "seed": [0, 1, 2]},
                   trends=[{"a": "mixed", "b": "understanding_only", "metric": "vqa/total", "expect": "lower"}])
    gain = {0.0: 0.30, 0.1: 0.20, 0.2: 0.10}  # the benefit shrinks by 0.1 per 0.1 of misalignment: slope -1

    fake_children(monkeypatch, value=lambda regime, seed, fraction, split: 0.5 + 0.01 * seed)
    runner = StudyRunner(spec, tmp_path / "runs", records=tmp_path / "studies", root=ROOT, log=lambda line: None)
    runner.run_all(expand(spec))
    for p in (tmp_path / "studies/records").glob("*mixed*.json"):  # write the benefit into the mixed runs' test scores
        rec = json.loads(p.read_text())
        noise = 0.01 * rec["seed"] * (rec["misalign"] * 10 - 1)
        rec["fractions"]["1.00"]["metrics"]["test"]["vqa/total"] += gain[rec["misalign"]] + noise
        p.write_text(json.dumps(rec))
    md = write_report(tmp_path / "studies", spec, {})["md"].read_text()
    line = next(x for x in md.splitlines() if x.startswith("Slope per unit of misalignment"))
    assert "-0.900, CI [-1.148, -0.652], 3 seeds: **replicates**" in line


def test_the_conclusion_of_a_trend_claim_follows_the_trend(tmp_path, monkeypatch):
    """Mixed beats understanding only by the same margin at every misalignment: each group's comparison
    replicates, but the gap does not shrink, so the claim (a trend) is not confirmed."""
    spec = spec_of(axes={"cell": ["vq_vq"], "regime": ["mixed", "understanding_only"], "misalign": [0.0, 0.1, 0.2], "seed": [0, 1, 2]},
                   trends=[{"a": "mixed", "b": "understanding_only", "metric": "vqa/total", "expect": "lower"}])
    fake_children(monkeypatch, value=lambda regime, seed, fraction, split: 0.5 + 0.01 * seed + 0.3 * (regime == "mixed"))
    StudyRunner(spec, tmp_path / "runs", records=tmp_path / "studies", root=ROOT, log=lambda line: None).run_all(expand(spec))
    md = write_report(tmp_path / "studies", spec, {})["md"].read_text()
    agree = next(x for x in md.splitlines() if x.startswith("*Does it agree?*"))
    assert agree.startswith("*Does it agree?* No: of 1 trend, 1 show no difference at all.")


def test_chance_levels_are_computed_and_the_best_constant_is_stronger():
    from lightning_vlm.smartwatch.chance import chance_levels

    levels = chance_levels(n=300)
    assert levels["vqa_ref/total"]["best_constant"] > levels["vqa_ref/total"]["chance"]
    assert levels["vqa_ref/battery"]["best_constant"] == pytest.approx(0.75, abs=0.03)  # "50%" against a uniform battery


def test_probes_run_on_the_final_checkpoint_and_reach_the_record_and_report(tmp_path, monkeypatch):
    spec = spec_of(probes=[{"where": "adapter", "attributes": ["weather"], "regimes": ["mixed"]}])
    calls = fake_children(monkeypatch)
    StudyRunner(spec, tmp_path / "runs", records=tmp_path / "studies", root=ROOT, log=lambda line: None).run_all(expand(spec))
    assert calls.count(("probe", None, None)) == 3  # the three mixed runs only
    record = json.loads(record_path(tmp_path / "studies", "vq_vq-mixed-s1-cpu").read_text())
    assert record["fractions"]["1.00"]["probes"]["adapter_flatten"][0]["test_accuracy"] == 0.91
    md = write_report(tmp_path / "studies", spec, {})["md"].read_text()
    assert "| adapter_flatten | weather | 0.910 ± 0.025 (n=3) |" in md


def test_a_regime_is_scored_on_the_tasks_it_trains():
    spec = spec_of(eval={"tasks": ["vqa", "generation"]},
                   regimes={"mixed": {"task_weights": "mixed"}, "understanding_only": {"task_weights": "understanding_only"},
                            "generation_only": {"task_weights": "generation_only"}})
    tasks = {r: run_commands(spec, Run("vq_vq", r, None, "default", 0), "out", ROOT).evals[0][2] for r in spec.regimes}
    picked = {r: cmd[cmd.index("--data.init_args.eval_tasks") + 1] for r, cmd in tasks.items()}
    assert picked == {"mixed": '["vqa", "generation"]', "understanding_only": '["vqa"]', "generation_only": '["generation"]'}
