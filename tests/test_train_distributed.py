"""Training with DistributedDataParallel: 2 CPU processes on gloo under torchrun."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from sltnet.data.synthetic.writing import generate_split

# Each rank trains, then saves the parameters it ended with.
RANK_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from sltnet.config import load_config
    from sltnet.data.catalog import DatasetCatalog
    from sltnet.engine.distributed import get_rank, get_world_size, shutdown_distributed
    from sltnet.engine.trainer import train

    config_file, output, *overrides = sys.argv[1:]
    result = train(load_config(config_file, overrides), DatasetCatalog(), log_period=1, run_evaluation=False,
                   progress=False)
    assert get_world_size() == 2
    torch.save(result.model.state_dict(), f"{output}/rank{get_rank()}.pt")
    shutdown_distributed()
    """
)


def test_two_gloo_processes_end_with_identical_parameters(tmp_path):
    data = tmp_path / "data"
    generate_split(
        str(data / "synthetic"),
        "synth_tiny_train",
        num_videos=2,
        num_frames=6,
        image_size=64,
        seed=0,
        workers=1,
        progress=False,
    )
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    output_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        "configs/synthetic/tiny_baseline.yaml",
        str(tmp_path),
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        "64",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "1",
        "OUTPUT_DIR",
        str(output_dir),
    ]
    env = {**os.environ, "SLTNET_DATA": str(data), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]

    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    # Rank 0 alone wrote the run: checkpoints with every rank's RNG state, one metrics record per iteration.
    assert sorted(p.name for p in output_dir.iterdir()) == [
        "config.yaml",
        "last_checkpoint",
        "metrics.jsonl",
        "model_0000001.pt",
        "model_0000002.pt",
        "model_final.pt",
    ]
    first = torch.load(output_dir / "model_0000001.pt", weights_only=False)
    last = torch.load(output_dir / "model_0000002.pt", weights_only=False)
    assert len(last["rng_states"]) == 2
    assert not torch.equal(first["rng_states"][0]["torch"], first["rng_states"][1]["torch"])
    assert last["data_position"]["samples_seen"] == 4
    assert all(torch.equal(last["model"][key], value) for key, value in rank0.items())
    assert any(not torch.equal(first["model"][key], value) for key, value in rank0.items())
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2]


def test_module_entry_point_reports_errors_in_one_line(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "sltnet.train", "--config-file", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2
    assert finished.stderr == f"error: {tmp_path / 'missing.yaml'}: no such config file\n"
