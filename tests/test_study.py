"""Study harness: spec expansion and sharding, resume, statistics and verdicts, report, FractionCheckpoint, one micro study."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_encoders import export_tiny_encoders, export_tiny_reader

from lightning_vlm.study.commands import run_commands
from lightning_vlm.study.layout import RunDir
from lightning_vlm.study.main import study_main
from lightning_vlm.study.records import records_from_runs
from lightning_vlm.study.report import COLUMNS, agreement, collect_rows, write_report
from lightning_vlm.study.runner import StudyRunner
from lightning_vlm.study.spec import Run, SpecError, expand, load_spec, parse_shard, parse_spec, shard
from lightning_vlm.study.stats import mean_ci, paired_differences, t_quantile, verdict

ROOT = Path(__file__).parents[1]
SPECS = sorted((ROOT / "configs/studies").glob("*.yaml"))


def micro(cells: dict, **extra) -> dict:
    """A small spec mapping: mixed vs understanding-only, 2 seeds, a cpu scale of 24 samples."""
    return {"name": "micro", "cells": cells, "axes": {"cell": list(cells), "regime": ["mixed", "understanding_only"], "seed": [0, 1]},
            "fractions": [0.5, 1.0], "scales": {"cpu": {"samples": 24, "epochs": 1}},
            "comparisons": [{"a": "mixed", "b": "understanding_only", "metric": "vqa/total"}], **extra}


VQ = {"vq_vq": ["configs/smartwatch/vq_vq.yaml"]}


# ---- spec --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_shipped_specs_load_and_shard_into_disjoint_thirds(path):
    runs = expand(load_spec(path, root=ROOT))
    assert len(set(runs)) == len(runs) and len({r.name for r in runs}) == len(runs)
    shards = [shard(runs, i, 3) for i in (1, 2, 3)]
    assert all(len(runs) // 3 <= len(s) <= -(-len(runs) // 3) for s in shards)
    assert sorted(r.name for s in shards for r in s) == sorted(r.name for r in runs)


def test_finding_specs_cover_their_grids_at_the_gpu_scale():
    f1 = expand(load_spec(ROOT / "configs/studies/finding1_mutual_benefit.yaml", root=ROOT, scale="gpu"))
    assert len(f1) >= 27 and {r.regime for r in f1} == {"mixed", "understanding_only", "generation_only", "step_matched"}
    assert {r.cell for r in f1} == {"vq_vq", "semantic_semantic", "diffusion_ae"} and {r.seed for r in f1} == {0, 1, 2}
    assert len(shard(f1, 2, 3)) == len(f1) // 3
    assert [r.seed for r in f1[:12]] == [0] * 12  # seeds outermost: a first seed of every cell finishes first
    f2 = expand(load_spec(ROOT / "configs/studies/finding2_alignment.yaml", root=ROOT, scale="gpu"))
    assert {(r.cell, r.misalign) for r in f2} == {(c, 0.0) for c in ("vq_vq", "vq_semantic", "semantic_vq", "semantic_semantic")} | {
        ("vq_vq", m) for m in (0.1, 0.2, 0.3)}
    f3 = expand(load_spec(ROOT / "configs/studies/finding3_transfer.yaml", root=ROOT, scale="gpu"))
    assert len(f3) == 27 and {r.variant for r in f3} == {"transfer_weather"}


def test_finding_1_at_the_cpu_scale_is_vq_vq_at_five_seeds():
    f1 = expand(load_spec(ROOT / "configs/studies/finding1_mutual_benefit.yaml", root=ROOT))
    assert {(r.cell, r.seed) for r in f1} == {("vq_vq", s) for s in range(5)}
    assert len(f1) == 20


def test_finding_2_at_the_cpu_scale_is_the_misalignment_trend_of_vq_vq_at_three_seeds():
    f2 = expand(load_spec(ROOT / "configs/studies/finding2_alignment.yaml", root=ROOT))
    assert {(r.cell, r.regime, r.misalign, r.seed) for r in f2} == {
        ("vq_vq", g, m, s) for g in ("mixed", "understanding_only") for m in (0.0, 0.1, 0.2, 0.3) for s in range(3)}


def test_finding_3_at_the_cpu_scale_is_mixed_against_understanding_only_at_five_seeds():
    f3 = expand(load_spec(ROOT / "configs/studies/finding3_transfer.yaml", root=ROOT))
    assert {r.regime for r in f3} == {"mixed", "understanding_only"}
    assert len(f3) == 10


def test_a_scale_adds_its_configs_after_the_cells():
    spec = load_spec(ROOT / "configs/studies/finding1_mutual_benefit.yaml", root=ROOT)
    fit = run_commands(spec, expand(spec)[0], "out", ROOT).fit
    configs = [fit[i + 1] for i, part in enumerate(fit) if part == "--config"]
    assert configs == ["configs/smartwatch/vq_vq.yaml", "configs/smartwatch/presets/cpu_study.yaml"]


def test_regimes_match_task_samples_or_steps():
    spec = parse_spec(micro(VQ, regimes={
        "mixed": {"task_weights": "mixed"}, "understanding_only": {"task_weights": {"vqa": 1, "caption": 1}},
        "generation_only": {"task_weights": {"generation": 1}}, "step_matched": {"task_weights": "understanding_only", "match": "steps"}},
        scales={"cpu": {"samples": 9600}}), root=ROOT)
    assert [spec.epoch_samples(r) for r in ("mixed", "understanding_only", "generation_only", "step_matched")] == [9600, 6400, 3200, 9600]
    cmd = run_commands(spec, Run("vq_vq", "understanding_only", None, "default", 3), "out", ROOT).fit
    assert cmd[cmd.index("--data.init_args.task_weights") + 1] == '{"vqa": 1.0, "caption": 1.0}'
    assert cmd[cmd.index("--data.init_args.epoch_samples") + 1] == "6400" and cmd[cmd.index("--seed_everything") + 1] == "3"


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"scales": {"cpu": {"samples": 1, "steps": 3}}}, "scales.cpu: unknown key 'steps'"),
    ({"axes": {"cell": ["nope"]}}, "axes[0].cell: 'nope' is not defined"),
    ({"axes": {"cell": ["vq_vq"], "temperature": [1]}}, "unknown axis 'temperature'"),
    ({"cells": {"x": ["configs/missing.yaml"]}, "axes": {"cell": ["x"]}}, "config file configs/missing.yaml not found"),
    ({"scale": "gpu"}, "scale 'gpu' has no entry"),
    ({"cells": {"x": {"configs": ["configs/smartwatch/vq_vq.yaml"], "flags": {}}}, "axes": {"cell": ["x"]}}, "cells.x: unknown key 'flags'"),
])
def test_spec_errors_are_one_line(change, message):
    with pytest.raises(SpecError) as err:
        parse_spec({**micro(VQ), **change}, root=ROOT)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_cell_is_an_overlay_plus_overrides(tmp_path):
    """`semantic_vq` is vq_vq.yaml reading the semantic encoder: its override follows the configs, before
    the run's own flags, in fit and evaluation alike; the logger and checkpoints go to the run folder."""
    cells = {"semantic_vq": {"configs": ["configs/smartwatch/vq_vq.yaml"], "overrides": {"model.init_args.input_encoder": "semantic"}}}
    spec = parse_spec(micro(cells), root=ROOT)
    commands = run_commands(spec, expand(spec)[0], tmp_path, ROOT)
    for cmd in (commands.fit, commands.evals[0][2]):
        at = cmd.index("--model.init_args.input_encoder")
        assert cmd[at + 1] == "semantic" and cmd[at - 1] == "configs/smartwatch/vq_vq.yaml"
    fit, run_dir = commands.fit, str(commands.dir.path)
    assert fit[fit.index("--trainer.logger.init_args.save_dir") + 1] == run_dir
    callbacks = yaml.safe_load(fit[fit.index("--trainer.callbacks") + 1])
    assert [c["class_path"].rpartition(".")[2] for c in callbacks] == ["ModelCheckpoint", "LearningRateMonitor", "FractionCheckpoint"]
    assert callbacks[0]["init_args"]["dirpath"] == run_dir and callbacks[0]["init_args"]["save_last"]  # the defaults file's, moved


def test_shard_argument():
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) == (1, 1)
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(SpecError):
            parse_shard(bad)
    assert shard(list(range(7)), 2, 3) == [1, 4]


# ---- resume --------------------------------------------------------------------------------------
def fake_subprocesses(monkeypatch, spec) -> list:
    """StudyRunner's children replaced by what fit and test leave behind; returns the verbs called."""
    calls = []

    def fake_call(self, cmd, log_stem):
        calls.append(cmd[1])
        d = RunDir(Path(cmd[cmd.index("--trainer.default_root_dir") + 1].removesuffix("/eval")))
        if cmd[1] == "fit":
            for f in spec.fractions:
                d.fraction_ckpt(f).write_text("")
        else:
            ckpt = Path(cmd[cmd.index("--ckpt_path") + 1])
            ckpt.with_name(ckpt.stem + ".test_metrics.json").write_text('{"test/vqa/total": 0.5}')
        return 0, 0.0

    monkeypatch.setattr(StudyRunner, "_call", fake_call)
    return calls


def test_keep_final_prunes_earlier_fraction_checkpoints(tmp_path, monkeypatch):
    spec = parse_spec(micro(VQ, scales={"cpu": {"samples": 24, "keep_checkpoints": "final"}}), root=ROOT)
    fake_subprocesses(monkeypatch, spec)
    run = expand(spec)[0]
    assert StudyRunner(spec, tmp_path, log=lambda line: None).run_all([run]) == 0
    d = RunDir.of(tmp_path, run)
    assert sorted(p.name for p in d.path.rglob("*.ckpt")) == ["frac-1.00.ckpt", "frac-1.00.ckpt"]  # test and its val link
    assert all(d.metrics(f, s).is_file() for f in (0.5, 1.0) for s in ("val", "test"))


def test_resume_skips_done_runs_and_continues_from_last_ckpt(tmp_path, monkeypatch):
    spec = parse_spec(micro(VQ), root=ROOT)
    runs = expand(spec)
    done, interrupted, fresh = (RunDir.of(tmp_path, r) for r in runs[:3])
    done.path.mkdir()
    done.done.write_text("")
    interrupted.path.mkdir()
    interrupted.last.write_text("")
    assert [d.state() for d in (done, interrupted, fresh)] == ["done", "partial", "pending"]
    fit = run_commands(spec, runs[1], tmp_path, ROOT).fit
    assert fit[-2:] == ["--ckpt_path", str(interrupted.last)]
    assert "--ckpt_path" not in run_commands(spec, runs[2], tmp_path, ROOT).fit

    calls = fake_subprocesses(monkeypatch, spec)
    lines = []
    assert StudyRunner(spec, tmp_path, log=lines.append).run_all(runs[:3]) == 0
    assert calls == ["fit"] + ["test"] * 4 + ["fit"] + ["test"] * 4  # the done run ran nothing
    assert lines[0].startswith("[1/3] vq_vq-mixed-s0-cpu  elapsed 0m00s  left ?") and "done already" in lines[1]
    record = json.loads(interrupted.run_json.read_text())
    assert record["fit_attempts"][0]["resumed_from"] == str(interrupted.last) and record["seed"] == 0
    assert (interrupted.path / "val" / "frac-0.50.ckpt").is_symlink() and interrupted.metrics(0.5, "val").is_file()
    assert interrupted.done.is_file() and fresh.done.is_file()
    calls.clear()
    assert StudyRunner(spec, tmp_path, log=lines.append).run_all(runs[:3]) == 0 and calls == []


# ---- statistics ---------------------------------------------------------------------------------
def test_mean_and_t_interval_by_hand():
    s = mean_ci([1, 2, 3, 4])  # sd = sqrt(5/3) = 1.29099, se = 0.645497, t(3) = 3.182446 -> half 2.054265
    assert (s.n, s.mean) == (4, 2.5) and s.sd == pytest.approx(1.290994, abs=1e-6)
    assert (s.lo, s.hi) == (pytest.approx(0.445735, abs=1e-5), pytest.approx(4.554265, abs=1e-5))
    one = mean_ci([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.lo)
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-4) and t_quantile(30) == pytest.approx(2.0423, abs=1e-4)
    assert t_quantile(31) == pytest.approx(2.0395, abs=2e-4) and t_quantile(10_000) == pytest.approx(1.9602, abs=2e-4)
    assert paired_differences({0: 0.6, 1: 0.7, 2: 0.9}, {0: 0.5, 1: 0.6, 3: 0.0}) == pytest.approx([0.1, 0.1])


def test_agreement_says_yes_only_when_every_comparison_replicates():
    assert agreement({"replicates": 2}, 2).startswith("Yes")


def test_agreement_names_a_split_between_comparisons():
    assert agreement({"replicates": 1, "contradicts": 1, "inconclusive at this scale": 1}, 3) == (
        "In part: of 3 comparisons, 1 replicate the paper's claim, 1 contradict it and 1 do not decide at this scale.")


def test_agreement_says_no_when_nothing_replicates_and_something_contradicts():
    assert agreement({"contradicts": 1, "inconclusive at this scale": 3}, 4) == (
        "No: of 4 comparisons, 1 contradict the paper's claim and 3 do not decide at this scale.")


def test_agreement_says_no_when_the_regimes_score_alike():
    assert agreement({"no difference": 1}, 1) == "No: of 1 comparison, 1 show no difference at all."


def test_agreement_waits_while_nothing_decides():
    assert agreement({"not yet a verdict": 4}, 4).startswith("Not yet")


def test_verdicts_follow_the_interval():
    up, down, wide = mean_ci([0.10, 0.12, 0.14]), mean_ci([-0.10, -0.12, -0.14]), mean_ci([-0.1, 0.0, 0.2])
    assert verdict(up, "higher") == "replicates"
    assert verdict(down, "higher") == "contradicts"
    assert verdict(down, "lower") == "replicates"
    assert verdict(up, "lower") == "contradicts"
    assert verdict(wide) == f"inconclusive at this scale (3 seeds, CI [{wide.lo:+.3f}, {wide.hi:+.3f}])"
    assert verdict(mean_ci([0.3])) == "inconclusive at this scale (1 seed, no CI)"
    assert verdict(mean_ci([0.0, 0.0, 0.0])) == "no difference (3 seeds, every pair scored the same)"
    two = mean_ci([0.30, 0.32])
    assert verdict(two).startswith("not yet a verdict (2 seeds, CI [")  # its CI excludes 0, but 2 seeds make no claim


# ---- report -------------------------------------------------------------------------------------
def fake_results(out: Path, spec, values: dict) -> None:
    """Run folders as `study run` leaves them; values[(regime, seed)] = test vqa/total at fraction 1."""
    for run in expand(spec):
        d = RunDir.of(out, run)
        (d.path / "val").mkdir(parents=True)
        d.run_json.write_text(json.dumps({"study": spec.name, "scale": "cpu", "run": run.name, "cell": run.cell, "regime": run.regime, "misalign": None, "variant": "default",
                                          "seed": run.seed, "epoch_samples": spec.epoch_samples(run.regime), "epochs": 1, "fractions": [0.5, 1.0]}))
        (d.path / "fractions.json").write_text(json.dumps({"0.50": {"fraction": 0.5, "step": 3}, "1.00": {"fraction": 1.0, "step": 6}}))
        for f in (0.5, 1.0):
            v = values[(run.regime, run.seed)] * f
            d.metrics(f, "test").write_text(json.dumps({"test/vqa/total": v, "test/gen/weather": 0.3}))
            d.metrics(f, "val").write_text(json.dumps({"test/vqa/total": v + 0.01}))


def test_report_writes_tidy_csv_markdown_and_plots(tmp_path):
    spec = parse_spec(micro(VQ, axes={"cell": ["vq_vq"], "regime": ["mixed", "understanding_only"], "seed": [0, 1, 2]},
                            chance={"vqa/total": 0.4}, metrics=["vqa/total", "gen/weather"]), root=ROOT)
    mixed, single = [0.8, 0.9, 0.85], [0.6, 0.65, 0.7]
    fake_results(tmp_path, spec, {**{("mixed", s): v for s, v in enumerate(mixed)}, **{("understanding_only", s): v for s, v in enumerate(single)}})
    rows = collect_rows(records_from_runs(tmp_path))
    assert len(rows) == 6 * 2 * 3  # runs x fractions x (2 test metrics + 1 val metric)
    row = next(r for r in rows if r["run"] == "vq_vq-understanding_only-s1-cpu" and r["fraction"] == 0.5 and r["split"] == "test" and r["metric"] == "vqa/total")
    assert row["value"] == pytest.approx(0.325) and row["samples_seen"] == 8 and row["step"] == 3  # planned: no counts in these runs
    paths = write_report(tmp_path, spec, chance={"vqa/total": {"chance": 0.393, "best_constant": 0.423}})
    assert paths["csv"].read_text().splitlines()[0] == ",".join(COLUMNS)
    md = paths["md"].read_text()
    diff = mean_ci([m - s for m, s in zip(mixed, single)])  # 0.2, 0.25, 0.15
    assert f"| {diff.mean:+.3f} | [{diff.lo:+.3f}, {diff.hi:+.3f}] | 3 |" in md
    assert "**Verdict at the final fraction (1.00): replicates**" in md
    assert "vqa/total (chance 0.393, best constant 0.423)" in md
    assert f"| mixed | test | 1.00 | 24 | {mean_ci(mixed).mean:.3f} ± {mean_ci(mixed).half_width:.3f} (n=3) |" in md
    assert "s0: 1.00 / 1.00, s1: 1.00 / 1.00, s2: 1.00 / 1.00): +0.200" in md  # val picks fraction 1.0 in every run
    assert len(paths["png"]) == 2 and all(p.stat().st_size > 1000 for p in paths["png"])


def test_the_report_counts_samples_of_runs_without_its_first_metric(tmp_path):
    """A regime scored on other tasks (generation_only has no VQA score) still shows its samples."""
    spec = parse_spec(micro(VQ, axes={"cell": ["vq_vq"], "regime": ["mixed", "understanding_only"], "seed": [0]},
                            metrics=["gen/weather", "vqa/total"]), root=ROOT)  # the val files hold vqa/total only
    fake_results(tmp_path, spec, {("mixed", 0): 0.8, ("understanding_only", 0): 0.6})
    md = write_report(tmp_path, spec, chance={})["md"].read_text()
    assert "| mixed | val | 1.00 | 24 | - | 0.810 (n=1) |" in md


# ---- FractionCheckpoint -------------------------------------------------------------------------
def test_fraction_checkpoint_saves_at_rounded_steps_and_at_the_end(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lightning_vlm.study.fraction_checkpoint import FractionCheckpoint

    class StopAt(pl.Callback):
        def __init__(self, step):
            self.step = step

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == self.step:
                trainer.should_stop = True

    def fit(folder, fractions, *callbacks):
        cb = FractionCheckpoint(fractions=fractions, dirpath=str(folder))
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=10, limit_val_batches=0, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[cb, *callbacks], accelerator="cpu", default_root_dir=folder,
                             enable_checkpointing=False)
        trainer.fit(BoringModel())
        return {p.name: torch.load(p, weights_only=False)["global_step"] for p in folder.glob("*.ckpt")}, json.loads((folder / "fractions.json").read_text())

    steps, record = fit(tmp_path / "a", [0.25, 0.5, 1.0])  # 10 steps: 2.5 -> 3 (halves up), 5, 10
    assert steps == {"frac-0.25.ckpt": 3, "frac-0.50.ckpt": 5, "frac-1.00.ckpt": 10}
    assert {k: record["0.25"][k] for k in ("fraction", "step", "total_steps", "epoch")} == {"fraction": 0.25, "step": 3, "total_steps": 10, "epoch": 0}
    assert record["0.25"]["precision"] == "32-true"
    steps, _ = fit(tmp_path / "b", [0.5, 1.0], StopAt(7))  # stopped early: the last fraction is saved at the final step
    assert steps == {"frac-0.50.ckpt": 5, "frac-1.00.ckpt": 7}


# ---- one micro study through the real CLI -------------------------------------------------------
@pytest.fixture(scope="module")
def micro_study(tmp_path_factory, tiny_data):
    """`lightning-vlm study run` of one tiny run (24 samples, batch 4: 6 steps), scored in the fit at fractions
    0.5 and 1.0 (test at the final one only), with its record in studies/micro; returns the folder."""
    tmp_path = tmp_path_factory.mktemp("micro_study")
    enc, reader = export_tiny_encoders(tmp_path, image_size=32), export_tiny_reader(tmp_path / "reader.ckpt")
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(yaml.safe_dump({
        "model": {"init_args": {"tokenizer_path": str(tiny_data / "tokenizer.json"), "input_encoder": str(enc["vq"]),
                                "output_encoder": str(enc["vq"]), "max_new_tokens": 4,
                                "backbone_overrides": {"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64}}},
        "data": {"init_args": {"data_dir": str(tiny_data), "reader": str(reader), "image_tokens_in": 16, "image_tokens_out": 16, "batch_size": 4,
                               "eval_batch_size": 15, "num_workers": 0}},
    }))
    spec = micro({"tiny": [str(ROOT / "configs/smartwatch/vq_vq.yaml"), str(overlay)]}, fractions=[0.5, 1.0],
                 axes={"cell": ["tiny"], "seed": [0]}, eval={"splits": ["val", "test"], "tasks": ["vqa", "generation"], "test_fractions": "final"})
    spec["scales"]["cpu"]["overrides"] = {"trainer.accelerator": "cpu", "trainer.precision": "32-true", "trainer.limit_val_batches": 0,
                                          "trainer.num_sanity_val_steps": 0, "trainer.enable_progress_bar": False}
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(spec))
    res = subprocess.run([sys.executable, "-m", "lightning_vlm", "study", "run", "micro.yaml", "--out", "out", "--threads", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return tmp_path, res.stdout


def test_micro_study_runs_through_the_cli(micro_study):
    folder, stdout = micro_study
    assert "[1/1] tiny-mixed-s0-cpu  elapsed" in stdout
    assert "1/1 runs done" in stdout


def test_micro_study_fit_trains_to_its_last_fraction(micro_study):
    d = RunDir(micro_study[0] / "out/tiny-mixed-s0-cpu")
    assert torch.load(d.fraction_ckpt(1.0), weights_only=False)["global_step"] == 6  # 24 samples / batch 4


def test_micro_study_scores_in_the_fit_without_test_processes(micro_study):
    d = RunDir(micro_study[0] / "out/tiny-mixed-s0-cpu")
    assert json.loads(d.run_json.read_text())["evals"] == {}  # val at both fractions and test at 1.0, all in the fit
    assert sorted(p.relative_to(d.path).as_posix() for p in d.path.rglob("*.test_metrics.json")) == [
        "frac-1.00.test_metrics.json", "val/frac-0.50.test_metrics.json", "val/frac-1.00.test_metrics.json"]


def test_in_fit_metrics_equal_lightning_vlm_test_on_the_checkpoint(micro_study):
    folder = micro_study[0]
    spec = load_spec(folder / "micro.yaml", root=folder)
    rc = run_commands(spec, expand(spec)[0], "out", folder)
    cmd = next(c for f, split, c in rc.evals if f == 1.0 and split == "test")
    copy = folder / "retest" / "frac-1.00.ckpt"
    copy.parent.mkdir()
    copy.write_bytes((folder / rc.dir.fraction_ckpt(1.0)).read_bytes())
    cmd[cmd.index("--ckpt_path") + 1] = str(copy)
    res = subprocess.run([sys.executable, "-m", "lightning_vlm", *cmd[1:]], cwd=folder, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    in_fit = json.loads((folder / rc.dir.metrics(1.0, "test")).read_text())
    tested = json.loads(copy.with_name("frac-1.00.test_metrics.json").read_text())
    assert tested == pytest.approx(in_fit, abs=1e-6)


def test_micro_study_counts_the_samples_of_each_task(micro_study):
    fractions = json.loads((micro_study[0] / "out/tiny-mixed-s0-cpu/fractions.json").read_text())
    assert sum(fractions["0.50"]["samples"].values()) == 12
    assert sum(fractions["1.00"]["samples"].values()) == 24


def test_micro_study_record_holds_metrics_and_provenance(micro_study):
    record = json.loads((micro_study[0] / "studies/micro/records/tiny-mixed-s0-cpu.json").read_text())
    assert record["command_hash"] and record["scale"] == "cpu" and record["precision"] == "32-true"
    assert sorted(record["fractions"]["1.00"]["metrics"]) == ["test", "val"]
    assert sorted(record["fractions"]["0.50"]["metrics"]) == ["val"]
    assert "--seed_everything 0" in record["commands"]["fit"] and "<run>" in record["commands"]["fit"]


def test_micro_study_report_regenerates_byte_identically_from_records(micro_study):
    folder = micro_study[0] / "studies/micro"
    assert study_main(["report", str(folder)]) == 0
    first = {p: p.read_bytes() for p in [folder / "report.md", folder / "results.csv", *(folder / "plots").glob("*.png")]}
    assert study_main(["report", str(folder)]) == 0
    assert {p: p.read_bytes() for p in first} == first
    assert "tiny-mixed-s0-cpu,tiny,mixed,,default,0,cpu,1.0,6,24," in (folder / "results.csv").read_text()


def test_a_stopped_runner_stops_its_child(tmp_path):
    """SIGTERM to `study run` (kill, pkill) ends the fit it started too, instead of leaving it on the cores."""
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    runner = (
        "import sys; from lightning_vlm.study.runner import run_child; "
        f"run_child([sys.executable, '-c', 'import os, time; open(r\"{pid_file}\", \"w\").write(str(os.getpid())); time.sleep(60)'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", runner])
    deadline = time.time() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    time.sleep(0.2)
    state = Path(f"/proc/{child}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z"  # gone, or a zombie waiting for its parent


def test_an_interrupted_fit_attempt_is_recorded_with_its_time(tmp_path, monkeypatch):
    spec = parse_spec(micro(VQ), root=ROOT)
    run = expand(spec)[0]

    def stopped(self, cmd, log_stem):
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(StudyRunner, "_call", stopped)
    with pytest.raises(KeyboardInterrupt):
        StudyRunner(spec, tmp_path, log=lambda line: None).run_all([run])
    attempt, = json.loads(RunDir.of(tmp_path, run).run_json.read_text())["fit_attempts"]
    assert attempt["returncode"] == "interrupted"
