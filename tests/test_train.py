"""sltnet-train (docs/method.md#two-stage-training): stage 1 and 2, the run's outputs, exact resume, one-line errors."""

import contextlib
import io
import json
import shutil

import pytest
import torch

from sltnet.config import load_config
from sltnet.data.catalog import DatasetCatalog
from sltnet.data.synthetic.writing import generate_split
from sltnet.engine.checkpoint import last_checkpoint
from sltnet.engine.trainer import check_initial_weights, check_training_settings, train
from sltnet.errors import SltnetError
from sltnet.train import main

BASELINE = "configs/synthetic/tiny_baseline.yaml"
SLTNET = "configs/synthetic/tiny_sltnet.yaml"
# 64-pixel synthetic frames, two groups per batch, loading in the main process.
TINY = [
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "64",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
]
STAGE1_ITERATIONS = 20
TEMPORAL_PREFIXES = ("st_box_head.", "st_cls_predictor.")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Synthetic tiny train (2 videos x 6 frames) and val (1 x 4) splits, found through $SLTNET_DATA."""
    root = tmp_path_factory.mktemp("data")
    for split, videos, frames, seed in (("synth_tiny_train", 2, 6, 0), ("synth_tiny_val", 1, 4, 1)):
        generate_split(
            str(root / "synthetic"),
            split,
            num_videos=videos,
            num_frames=frames,
            image_size=64,
            seed=seed,
            workers=1,
            progress=False,
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLTNET_DATA", str(root))
        yield root


@pytest.fixture(scope="module")
def stage1(data_root, tmp_path_factory):
    """A stage-1 run through the command line, evaluated on synth_tiny_val: (output dir, printed text)."""
    output_dir = tmp_path_factory.mktemp("stage1")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(
            [
                "--config-file",
                BASELINE,
                "--log-period",
                "1",
                "--no-progress",
                *TINY,
                "SOLVER.MAX_ITER",
                str(STAGE1_ITERATIONS),
                "SOLVER.BASE_LR",
                "0.02",
                "SOLVER.WARMUP_ITERS",
                "2",
                "SOLVER.CHECKPOINT_PERIOD",
                "10",
                "OUTPUT_DIR",
                str(output_dir),
            ]
        )
    assert status == 0
    return output_dir, printed.getvalue()


def read_metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def cli_error(argv, capsys):
    """Run the command line expecting a user error; return its one stderr line."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_stage1_loss_falls_and_the_run_writes_its_outputs(stage1):
    output_dir, printed = stage1
    records = read_metrics(output_dir)
    assert [r["iteration"] for r in records] == list(range(1, STAGE1_ITERATIONS + 1))
    assert set(records[0]) == {
        "iteration",
        "loss_rpn_cls",
        "loss_rpn_loc",
        "loss_cls",
        "loss_box_reg",
        "total_loss",
        "lr",
        "seconds_per_iter",
    }
    for record in records:
        losses = sum(v for k, v in record.items() if k.startswith("loss_"))
        assert record["total_loss"] == pytest.approx(losses)
    assert records[0]["lr"] == pytest.approx(0.02 * 0.001)  # linear warm-up from WARMUP_FACTOR
    assert records[-1]["lr"] == pytest.approx(0.002)  # after the step at iteration 15
    totals = [r["total_loss"] for r in records]
    assert sum(totals[-3:]) / 3 < 0.7 * totals[0]

    assert sorted(p.name for p in output_dir.iterdir()) == [
        "config.yaml",
        "last_checkpoint",
        "metrics.jsonl",
        "metrics_final.json",
        "model_0000010.pt",
        "model_0000020.pt",
        "model_final.pt",
    ]
    assert last_checkpoint(output_dir).name == "model_0000020.pt"
    assert load_config(str(output_dir / "config.yaml")).SOLVER.MAX_ITER == STAGE1_ITERATIONS
    state = torch.load(output_dir / "model_0000010.pt", weights_only=False)
    assert state["iteration"] == 10
    assert state["data_position"] == {"samples_seen": 20, "epoch": 1, "position": 8}  # 12 frames per epoch
    assert set(state) >= {"model", "optimizer", "scheduler", "grad_scaler", "rng_states", "config"}
    final = torch.load(output_dir / "model_final.pt", weights_only=False)
    assert set(final) == {"model", "iteration", "config"}
    last = torch.load(output_dir / "model_0000020.pt", weights_only=False)
    assert all(torch.equal(final["model"][k], v) for k, v in last["model"].items())

    metrics = json.loads((output_dir / "metrics_final.json").read_text())
    assert list(metrics) == ["synth_tiny_val"] and metrics["synth_tiny_val"]["num_frames"] == 4
    assert "evaluation on synth_tiny_val:" in printed and "VID mAP@0.5" in printed


def test_stage2_trains_the_st_head_and_leaves_the_rest_bit_identical(stage1, tmp_path):
    stage1_dir, _ = stage1
    cfg = load_config(
        SLTNET,
        [
            *TINY,
            "MODEL.WEIGHTS",
            str(stage1_dir / "model_final.pt"),
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.CHECKPOINT_PERIOD",
            "1",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
    )
    result = train(cfg, DatasetCatalog(), log_period=2, run_evaluation=False, progress=False)
    assert result.iteration == 3 and result.final_weights == tmp_path / "model_final.pt"

    baseline = torch.load(stage1_dir / "model_final.pt", weights_only=False)["model"]
    first = torch.load(tmp_path / "model_0000001.pt", weights_only=False)
    final = torch.load(tmp_path / "model_final.pt", weights_only=False)["model"]
    assert set(final) == set(baseline) | {k for k in final if k.startswith(TEMPORAL_PREFIXES)}
    for key, value in baseline.items():
        assert torch.equal(final[key], value), key
    temporal = [k for k in final if k.startswith(TEMPORAL_PREFIXES)]
    assert temporal and any(not torch.equal(first["model"][k], final[k]) for k in temporal)
    # The optimizer holds exactly the ST head's parameters.
    trainable = [p for n, p in result.model.named_parameters() if n.startswith(TEMPORAL_PREFIXES)]
    assert sum(len(g["params"]) for g in first["optimizer"]["param_groups"]) == len(trainable)

    records = read_metrics(tmp_path)
    assert [r["iteration"] for r in records] == [2, 3]  # every --log-period and the last
    assert set(records[0]) == {"iteration", "loss_st_cls", "total_loss", "lr", "seconds_per_iter"}


def test_stage2_with_an_unfrozen_rpn_trains_it_with_its_losses(stage1, tmp_path):
    """MODEL.SPATIOTEMPORAL.FREEZE_PROPOSAL_GENERATOR false: the RPN learns from its own losses next
    to the ST head; the still frozen backbone and spatial head stay bit-identical."""
    stage1_dir, _ = stage1
    overrides = [*TINY, "MODEL.WEIGHTS", str(stage1_dir / "model_final.pt"), "SOLVER.MAX_ITER", "2"]
    overrides += ["MODEL.SPATIOTEMPORAL.FREEZE_PROPOSAL_GENERATOR", "false", "OUTPUT_DIR", str(tmp_path)]
    train(load_config(SLTNET, overrides), DatasetCatalog(), log_period=1, run_evaluation=False, progress=False)
    baseline = torch.load(stage1_dir / "model_final.pt", weights_only=False)["model"]
    final = torch.load(tmp_path / "model_final.pt", weights_only=False)["model"]
    changed = {key.split(".")[0] for key, value in baseline.items() if not torch.equal(final[key], value)}
    assert changed == {"rpn"}
    assert set(read_metrics(tmp_path)[0]) == {
        "iteration",
        "loss_st_cls",
        "loss_rpn_cls",
        "loss_rpn_loc",
        "total_loss",
        "lr",
        "seconds_per_iter",
    }


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(data_root, tmp_path):
    """Kill after the checkpoint at 3 of 6 iterations, resume; the schedule steps after the kill
    and the data wrap into a new epoch (4 groups per epoch) across it. The checkpoint falls inside
    the first log window (iterations 1-4): the record at 4 still averages all four."""
    overrides = [
        *TINY,
        "DATALOADER.TRAIN_GROUPS_PER_VIDEO",
        "2",
        "SOLVER.MAX_ITER",
        "6",
        "SOLVER.STEPS",
        "(4,)",
        "SOLVER.WARMUP_ITERS",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "3",
    ]
    catalog = DatasetCatalog()
    whole = train(
        load_config(BASELINE, overrides + ["OUTPUT_DIR", str(tmp_path / "whole")]),
        catalog,
        log_period=4,
        run_evaluation=False,
        progress=False,
    )

    # The resumed run loads in a worker process: the data must not depend on where they are loaded.
    cfg = load_config(BASELINE, overrides + ["OUTPUT_DIR", str(tmp_path / "killed"), "DATALOADER.NUM_WORKERS", "1"])
    stopped = train(cfg, catalog, log_period=4, run_evaluation=False, progress=False, stop_at=4)
    assert stopped.iteration == 4 and stopped.final_weights is None
    killed_dir = tmp_path / "killed"
    assert last_checkpoint(killed_dir).name == "model_0000003.pt" and not (killed_dir / "model_final.pt").exists()
    checkpoint = torch.load(killed_dir / "model_0000003.pt", weights_only=False)
    assert checkpoint["data_position"] == {"samples_seen": 6, "epoch": 1, "position": 2}
    assert checkpoint["metrics_window"]["iterations"] == 3  # 1-3, logged with 4
    resumed = train(cfg, catalog, resume=True, log_period=4, run_evaluation=False, progress=False)
    assert resumed.iteration == 6

    expected = torch.load(whole.final_weights, weights_only=False)["model"]
    actual = torch.load(resumed.final_weights, weights_only=False)["model"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    # The record of iteration 4 from before the kill is replaced by the resumed run's, which
    # averages iterations 1-4 as the uninterrupted run does; every value but the wall time is equal.
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds_per_iter"} for r in records]  # noqa: E731
    expected_records = read_metrics(tmp_path / "whole")
    assert [r["iteration"] for r in expected_records] == [4, 6]
    assert strip(read_metrics(killed_dir)) == strip(expected_records)
    assert all(r["seconds_per_iter"] > 0 for r in read_metrics(killed_dir))


def test_corrupt_image_is_the_same_one_line_error_with_or_without_workers(data_root, tmp_path, capsys):
    """A DataLoader worker's SltnetError reaches the user as the main process's would: one line, exit 2."""
    shutil.copytree(data_root, tmp_path / "data")
    corrupt = tmp_path / "data" / "synthetic" / "synth_tiny_train" / "video_00001" / "000003.jpg"
    corrupt.write_bytes(b"this is not a JPEG")
    errors = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLTNET_DATA", str(tmp_path / "data"))
        for workers in ("0", "1"):
            argv = ["--config-file", BASELINE, "--no-progress", "--no-eval", *TINY, "DATALOADER.NUM_WORKERS", workers]
            # 6 iterations of 2 groups: every frame of the epoch is loaded.
            argv += ["SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(tmp_path / f"out{workers}")]
            errors.append(cli_error(argv, capsys))
    assert errors[0] == errors[1]
    assert errors[0].startswith(f"error: {corrupt}: cannot decode image")
    assert not list((tmp_path / "out1").glob(".*.tmp"))


def test_initial_weights_at_a_path_the_run_writes_are_refused(stage1, tmp_path, capsys):
    stage1_dir, _ = stage1
    for name in ("model_final.pt", "model_0000010.pt", "model_0000005.pt"):
        shutil.copy(stage1_dir / "model_final.pt", tmp_path / name)
    (tmp_path / "link.pt").symlink_to(tmp_path / "model_0000010.pt")
    overrides = [*TINY, "SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "10", "OUTPUT_DIR", str(tmp_path)]
    base = ["--config-file", BASELINE, "--no-progress", *overrides]
    error = cli_error(base + ["MODEL.WEIGHTS", str(tmp_path / "model_final.pt")], capsys)
    assert error == (
        f"error: OUTPUT_DIR/model_final.pt {tmp_path.resolve() / 'model_final.pt'}: is also MODEL.WEIGHTS; "
        "an output never replaces an input"
    )
    # A checkpoint the run writes (at 10 and 20), also through a link.
    for weights in ("model_0000010.pt", "link.pt"):
        error = cli_error(base + ["MODEL.WEIGHTS", str(tmp_path / weights)], capsys)
        assert error.startswith("error: OUTPUT_DIR/model_0000010.pt ") and error.endswith(
            "is also MODEL.WEIGHTS; an output never replaces an input"
        )
    # One it does not write is an input like any other.
    check_initial_weights(load_config(BASELINE, overrides + ["MODEL.WEIGHTS", str(tmp_path / "model_0000005.pt")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "link.pt",
        "model_0000005.pt",
        "model_0000010.pt",
        "model_final.pt",
    ]


def test_resume_refusals(stage1, tmp_path, capsys):
    stage1_dir, _ = stage1
    base = ["--config-file", BASELINE, "--no-progress", *TINY, "SOLVER.MAX_ITER", str(STAGE1_ITERATIONS)]
    error = cli_error(base + ["OUTPUT_DIR", str(stage1_dir)], capsys)
    assert f"{stage1_dir}: holds a training run (last checkpoint model_0000020.pt); pass --resume" in error
    error = cli_error(base + ["--resume", "OUTPUT_DIR", str(tmp_path)], capsys)
    assert f"{tmp_path}: no checkpoint to resume from" in error
    error = cli_error(base + ["--resume", "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "OUTPUT_DIR", str(stage1_dir)], capsys)
    assert "model_0000020.pt: saved with MODEL.ROI_BOX_HEAD.FC_DIM = 64 but the config now has 32" in error
    assert list(tmp_path.iterdir()) == []


def test_non_finite_loss_stops_with_the_iteration(data_root, tmp_path, capsys):
    error = cli_error(
        [
            "--config-file",
            BASELINE,
            "--no-progress",
            "--no-eval",
            *TINY,
            "SOLVER.BASE_LR",
            "1e20",
            "SOLVER.WARMUP_ITERS",
            "0",
            "SOLVER.MAX_ITER",
            "4",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
        capsys,
    )
    assert error.startswith("error: iteration 2: loss is not finite (loss_box_reg nan")
    assert "lower SOLVER.BASE_LR" in error


def test_data_errors(data_root, tmp_path, capsys):
    base = ["--config-file", BASELINE, "--no-progress", *TINY, "OUTPUT_DIR", str(tmp_path / "out")]
    assert "DATASETS.TRAIN is empty" in cli_error(base + ["DATASETS.TRAIN", "[]"], capsys)
    error = cli_error(base + ["DATASETS.TRAIN", "['synth_tiny_trian']"], capsys)
    assert "unknown dataset 'synth_tiny_trian'; did you mean 'synth_tiny_train'" in error
    error = cli_error(base + ["DATASETS.TEST", "['nowhere']"], capsys)
    assert "unknown dataset 'nowhere'" in error
    error = cli_error(base + ["MODEL.ROI_HEADS.NUM_CLASSES", "3"], capsys)
    assert error.endswith("synth_tiny_train.json: 4 classes, but MODEL.ROI_HEADS.NUM_CLASSES is 3")

    # Frames without any box: no group to train on.
    empty_json = tmp_path / "empty.json"
    images = [
        {"id": i, "file_name": f"v/{i}.jpg", "width": 64, "height": 64, "video": "v", "frame_number": i} for i in (1, 2)
    ]
    empty_json.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    error = cli_error(
        base
        + [
            "--dataset-spec",
            f"empty={tmp_path},{empty_json}",
            "DATASETS.TRAIN",
            "['empty']",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "1",
        ],
        capsys,
    )
    assert error.startswith(f"error: {empty_json}: no frame group of 1 frames") and "nothing to train on" in error

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLTNET_DATA", str(tmp_path / "no_data"))
        error = cli_error(base, capsys)
    missing = tmp_path / "no_data" / "synthetic" / "annotations" / "synth_tiny_train.json"
    assert error == f"error: {missing}: annotation file not found"
    assert not (tmp_path / "out").exists()


def test_setting_errors(tmp_path, capsys):
    base = ["--config-file", BASELINE, "--no-progress", "OUTPUT_DIR", str(tmp_path)]
    assert "SEED must be non-negative, got -1" in cli_error(base + ["SEED", "-1"], capsys)
    error = cli_error(base + ["SOLVER.CHECKPOINT_PERIOD", "0"], capsys)
    assert "SOLVER.CHECKPOINT_PERIOD must be positive, got 0" in error
    assert "--log-period must be at least 1, got 0" in cli_error(base + ["--log-period", "0"], capsys)
    assert "unknown config key SOLVER.MAX_ITERS" in cli_error(base + ["SOLVER.MAX_ITERS", "3"], capsys)
    assert "--config-file" in cli_error(["SOLVER.MAX_ITER", "3"], capsys)
    assert list(tmp_path.iterdir()) == []
    cfg = load_config(BASELINE, ["SOLVER.IMS_PER_BATCH", "3"])
    check_training_settings(cfg, world_size=1)
    with pytest.raises(SltnetError, match=r"IMS_PER_BATCH \(3\) must be a multiple of the number of processes \(2\)"):
        check_training_settings(cfg, world_size=2)
