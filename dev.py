#!/usr/bin/env python3
"""Set up the project's own virtual environment and run the demo or the tests.

    python3 dev.py demo           # set up, then the whole pipeline on the synthetic "small" setup
    python3 dev.py demo --train   # the same, training the small model instead of using the shipped one
    python3 dev.py test           # set up, then run the test suite (extra arguments go to pytest)
    python3 dev.py lint           # set up, then ruff (lint and format check) and mypy, as CI runs them

The demo: take the small SLTnet (weights trained here in output/, else the shipped half-precision
ones; with --train, or when neither exists, build the synthetic splits and train both stages),
export it to ONNX, generate a synthetic clip and run sltnet-run on it with onnxruntime, writing an
annotated mp4 and the detections as JSON.

Only the Python standard library is used here: this runs on a machine that has nothing but python3.
"""

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
# Records which pyproject.toml the environment was installed from, so an unchanged project
# is not reinstalled on every call.
STAMP = VENV / ".sltnet-installed"

DATA_ROOT = ROOT / "datasets"
SYNTHETIC = DATA_ROOT / "synthetic"
CONFIGS = ROOT / "configs" / "synthetic"
STAGE_1 = "small_baseline"
STAGE_2 = "small_sltnet_sequential"
# The trained small SLTnet (sequential) in float16, what the demo runs without training.
SHIPPED_WEIGHTS = ROOT / "sltnet" / "weights" / f"{STAGE_2}_fp16.pt"
ENGINE_DIR = ROOT / "output" / "engines" / STAGE_2
DEMO_OUT = ROOT / "output" / "demo"
# (split, videos, seed) of the synthetic data the small configs name; the clip is a separate video.
SPLITS = [("synth_small_train", 100, 0), ("synth_small_val", 20, 1)]
CLIP = ("demo_clip", 1, 7)


def run(*command: object, env: dict = None) -> None:
    printable = " ".join(str(part) for part in command)
    print(f"+ {printable}", flush=True)
    status = subprocess.call([str(part) for part in command], cwd=ROOT, env=env)
    if status != 0:
        sys.exit(status)


def setup() -> None:
    """Create .venv and install the project (editable, with test tools) if pyproject.toml changed."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", ".[dev]")
    STAMP.write_text(wanted + "\n")


def weights(config: str) -> Path:
    return ROOT / "output" / "synthetic" / config / "model_final.pt"


def train_small(env: dict) -> Path:
    """Both stages of the small setup (resuming an interrupted run); the stage-2 weights."""
    for config in (STAGE_1, STAGE_2):
        if not weights(config).exists():
            # Resume a run that was interrupted; evaluation is left to sltnet-eval.
            resume = ["--resume"] if (weights(config).parent / "last_checkpoint").exists() else []
            run(BIN / "sltnet-train", "--config-file", CONFIGS / f"{config}.yaml", "--no-eval", *resume, env=env)
    return weights(STAGE_2)


def exported_from(model: Path) -> bool:
    """Whether ENGINE_DIR holds an export of ``model``."""
    manifest = ENGINE_DIR / "manifest.json"
    if not manifest.exists():
        return False
    return Path(json.loads(manifest.read_text()).get("source", {}).get("weights", "")).resolve() == model.resolve()


def demo(train: bool) -> None:
    """Small SLTnet (trained here, shipped, or trained now) -> ONNX engines -> sltnet-run on a clip."""
    env = dict(os.environ, SLTNET_DATA=str(DATA_ROOT))
    use_shipped = not train and not weights(STAGE_2).exists() and SHIPPED_WEIGHTS.exists()
    # The shipped model needs only the validation split (class names, a check); training needs both.
    for split, videos, seed in SPLITS[1:] if use_shipped else SPLITS:
        if not (SYNTHETIC / "annotations" / f"{split}.json").exists():
            run(
                BIN / "sltnet-synth",
                SYNTHETIC,
                "--split",
                split,
                "--videos",
                videos,
                "--frames",
                30,
                "--size",
                256,
                "--seed",
                seed,
                env=env,
            )
    run(BIN / "sltnet-data", "validate", "synth_small_val", env=env)
    model = SHIPPED_WEIGHTS if use_shipped else train_small(env)
    print(f"model: {model.relative_to(ROOT)}", flush=True)
    if not exported_from(model):
        run(
            BIN / "sltnet-export",
            "--config-file",
            CONFIGS / f"{STAGE_2}.yaml",
            "--weights",
            model,
            "--format",
            "onnx",
            "--out",
            ENGINE_DIR,
            "--dataset",
            "synth_small_val",
            "--check-trt",
            env=env,
        )
    split, videos, seed = CLIP
    run(
        BIN / "sltnet-synth",
        DEMO_OUT / "data",
        "--split",
        split,
        "--videos",
        videos,
        "--frames",
        60,
        "--size",
        256,
        "--seed",
        seed,
        "--mp4",
        env=env,
    )
    clip = DEMO_OUT / "data" / f"{split}_mp4" / "video_00000.mp4"
    ground_truth = DEMO_OUT / "data" / "annotations" / f"{split}.json"
    detections = DEMO_OUT / "demo_detections.json"
    run(
        BIN / "sltnet-run",
        clip,
        "--engine",
        ENGINE_DIR,
        "--backend",
        "onnxruntime",
        "--out",
        DEMO_OUT / "demo_annotated.mp4",
        "--json",
        detections,
        "--gt-json",
        ground_truth,
        env=env,
    )
    run(BIN / "sltnet-eval", "--gt", ground_truth, "--detections", detections, env=env)
    print(f"\ndemo outputs: {DEMO_OUT / 'demo_annotated.mp4'} (annotated video), {detections} (detections)")


def test(pytest_args: list) -> None:
    run(PYTHON, "-m", "pytest", "-q", *pytest_args)


def lint() -> None:
    """ruff's lint rules and formatting, then mypy, all configured in pyproject.toml."""
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    run(BIN / "mypy")


def main() -> None:
    command, options = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else (None, [])
    demo_options = command == "demo" and options in ([], ["--train"])
    if not (command == "test" or demo_options or (command == "lint" and not options)):
        sys.exit(__doc__)
    setup()
    if command == "demo":
        demo(train=options == ["--train"])
    elif command == "lint":
        lint()
    else:
        test(options)


if __name__ == "__main__":
    main()
