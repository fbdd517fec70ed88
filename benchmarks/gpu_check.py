"""Everything this project checks on a CUDA machine, in one command that ends within its budget
(default 450 s): the CUDA tests, then ``benchmarks/fps.py --device cuda`` on every backend and
precision available there (docs/deployment.md#checking-on-a-gpu).

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--out-dir benchmarks/results] [--budget-s 450]
                                                 [--frames 200] [--warmup 20] [--calib-frames 32]

It runs the machine's own ``torch`` (nothing is installed, so the project's pin does not apply):
``PYTHONPATH=.`` makes the repository importable. Steps, each a subprocess with a timeout cut to
what is left of the budget (a step that no longer fits is recorded as skipped):

1. the CUDA tests: ``pytest -k "cuda or tensorrt"`` over the test files that mention either;
2. exports (``sltnet-export``'s ``main``) of the small SLTnet from the shipped weights
   (``sltnet/weights/small_sltnet_sequential_fp16.pt``) and of the tiny config with random weights,
   at fp32, fp16 and int8 (calibrated on a small synthetic split made here), with ``--check-trt``,
   and ``--format trt`` where TensorRT can build; an export that fails is recorded with its
   one-line message and its precision skipped (its ONNX rows still run if its manifest was written);
3. ``fps.py --device cuda`` on each export: the ``torch`` backend (device-resident rings) always,
   ``eager`` for the fp32 exports, ``onnxruntime`` where its CUDA provider exists, ``tensorrt``
   where the export has plans. A call that fails (not one that times out) is repeated backend by
   backend;
4. last, so that it never crowds out the rows above: ``fps.py --backend torch --streams 1 2 4`` on
   each fp32 export (aggregate fps and per-frame latency of 1, 2 and 4 streams on the one set of
   engines, docs/deployment.md#many-streams).

Results: ``OUT_DIR/gpu_check_<gpu>.json`` and ``.md`` (the GPU's name, the versions of torch,
CUDA, the driver, onnxruntime and tensorrt, every step with its status, every fps row and
multi-stream row). Exit
status 0 when the CUDA tests passed and each config has its fp32 torch-CUDA row, else 1; 2 when
torch sees no CUDA device or a package the project imports is missing (one line).
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from sltnet.cli import ArgumentParser, console_entry
from sltnet.errors import SltnetError

ROOT = Path(__file__).resolve().parent.parent
#: Modules the project imports that a CUDA machine's Python may lack (the wheels to carry are in
#: docs/deployment.md#checking-on-a-gpu).
PROJECT_MODULES = ("yacs", "yaml", "pydantic", "av", "pycocotools", "onnx", "onnxruntime", "tqdm", "PIL", "numpy")
SMALL_CONFIG = "configs/synthetic/small_sltnet_sequential.yaml"
SMALL_WEIGHTS = "sltnet/weights/small_sltnet_sequential_fp16.pt"
TINY_CONFIG = "configs/synthetic/tiny_sltnet.yaml"
PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_SPLIT = "synth_small_val"  # a built-in dataset name, made under a scratch $SLTNET_DATA
TEST_SELECTION = "cuda or tensorrt"
STREAMS = (1, 2, 4)  # stream counts of the multi-stream rows (torch on CUDA, fp32 exports)
# Seconds each step may take at most (less when the budget has less left), and kept for writing results.
TESTS_S, SYNTH_S, EXPORT_S, INT8_EXPORT_S, FPS_S, RESERVE_S = 150, 60, 90, 150, 90, 5
LOG_TAIL_LINES = 20
EXPORT_MAIN = "import sys; from export.cli import main; sys.exit(main(sys.argv[1:]))"
SYNTH_MAIN = "import sys; from sltnet.tools.synth import main; sys.exit(main(sys.argv[1:]))"


class Step(NamedTuple):
    """One step's outcome: ``status`` is ok, failed, timeout or skipped; ``message`` its last error
    line, ``log_tail`` the end of its output where it did not succeed (the logs go with the scratch folder)."""

    name: str
    status: str
    seconds: float
    message: str = ""
    log_tail: str = ""


class Budget:
    """The seconds left of ``total`` since creation, shared by all steps."""

    def __init__(self, total: float) -> None:
        self.end = time.monotonic() + total
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def timeout(self, cap: float) -> float:
        """The timeout a step capped at ``cap`` seconds gets now (<= 0: it does not fit)."""
        return min(cap, self.end - time.monotonic() - RESERVE_S)


def gpu_slug(name: str) -> str:
    """A GPU name as a file name part: "NVIDIA H200" -> "nvidia_h200"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "gpu"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _text(output: str | bytes | None) -> str:
    """A subprocess's captured output (bytes when a timeout cut it short)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_step(name: str, command: Sequence[str], cap: float, budget: Budget, env: dict, log_dir: Path) -> Step:
    """Run ``command`` (output to ``log_dir/<name>.log``) within ``cap`` and what is left of the budget."""
    timeout = budget.timeout(cap)
    if timeout <= 0:
        step = Step(name, "skipped", 0.0, "time budget spent")
    else:
        print(f"[{budget.elapsed():5.0f} s] {name} ...", flush=True)
        start = time.monotonic()
        log = log_dir / (re.sub(r"[^\w.-]+", "_", name) + ".log")
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            output = done.stdout + done.stderr
            status = "ok" if done.returncode == 0 else "failed"
            message = "" if status == "ok" else _last_line(done.stderr) or _last_line(done.stdout)
        except subprocess.TimeoutExpired as stopped:
            output = _text(stopped.stdout) + _text(stopped.stderr)
            status, message = "timeout", f"stopped after {timeout:.0f} s"
        log.write_text(output, encoding="utf-8")
        tail = "" if status == "ok" else "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        step = Step(name, status, time.monotonic() - start, message, tail)
    print(f"[{budget.elapsed():5.0f} s] {name}: {step.status} {step.message}".rstrip(), flush=True)
    return step


def driver_version() -> str | None:
    """The NVIDIA driver's version, from nvidia-smi or NVML (None where neither answers)."""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        try:
            found = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
        except subprocess.TimeoutExpired:
            found = ""
        if found:
            return found.splitlines()[0]
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # NVML missing or unusable: the version is only reported
        return None


def versions() -> dict:
    """GPU and library versions for the results."""
    import onnxruntime

    from runtime.engines import tensorrt_unavailable

    info = {
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "driver": driver_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "tensorrt": None,
        "tensorrt_unavailable": tensorrt_unavailable(),
    }
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    return info


def cuda_test_files() -> list[str]:
    """Test files that mention CUDA or TensorRT (``-k`` then picks the tests so named)."""
    files = sorted((ROOT / "tests").glob("test_*.py"))
    return [str(f.relative_to(ROOT)) for f in files if re.search("cuda|tensorrt", f.read_text(encoding="utf-8"), re.I)]


def tests_summary(log: Path) -> str:
    """pytest's closing line, e.g. "3 passed, 12 deselected in 20.1s"."""
    text = log.read_text(encoding="utf-8") if log.is_file() else ""
    closing = re.compile(r"\d+ (passed|failed|skipped|deselected|errors?)\b.* in [\d.]+s")
    return next((line.strip("= ") for line in reversed(text.splitlines()) if closing.search(line)), "")


def tiny_weights(folder: Path) -> Path:
    """Random tiny SLTnet weights (seed 0): speed only, their detections mean nothing."""
    from sltnet.config import load_config
    from sltnet.modeling.build import build_model

    torch.manual_seed(0)
    path = folder / "tiny_sltnet_random.pt"
    torch.save(build_model(load_config(TINY_CONFIG, ["MODEL.WEIGHTS", ""])).state_dict(), path)
    return path


def class_names(config: str) -> str:
    from sltnet.config import load_config
    from sltnet.data.synthetic.sampling import CLASS_PATTERNS

    return ",".join(CLASS_PATTERNS[: load_config(config, ["MODEL.WEIGHTS", ""]).MODEL.ROI_HEADS.NUM_CLASSES])


def export_command(config: str, weights: Path, out: Path, precision: str, trt: bool, calib_frames: int) -> list[str]:
    command = [sys.executable, "-c", EXPORT_MAIN, "--config-file", config, "--weights", str(weights), "--out", str(out)]
    command += ["--class-names", class_names(config), "--check-trt", "--format", "trt" if trt else "onnx"]
    if precision != "fp32":  # fp32 is the default
        command += ["--precision", precision]
    if precision == "int8":
        command += ["--calib-dataset", CALIBRATION_SPLIT, "--calib-frames", str(calib_frames)]
    return command


def engine_backends(export: Path, precision: str) -> list[str]:
    """fps.py's backends for one export on this machine."""
    from runtime.engines import onnxruntime_cuda_available, tensorrt_unavailable
    from sltnet.contract import Manifest

    backends = ["torch"] + (["eager"] if precision == "fp32" else [])
    if onnxruntime_cuda_available():
        backends.append("onnxruntime")
    if tensorrt_unavailable(Manifest.load(export)) is None:
        backends.append("tensorrt")
    return backends


def fps_call(
    export: Path,
    backends: list[str],
    video: str,
    args: argparse.Namespace,
    budget: Budget,
    env: dict,
    scratch: Path,
    streams: Sequence[int] = (),
) -> tuple[Step, dict]:
    """One ``fps.py --device cuda`` call on ``export`` (with ``--streams`` if given); its JSON ({} unless ok)."""
    counts = [str(n) for n in streams]
    name = " ".join(["fps", export.name, *backends, *(["streams", *counts] if counts else [])])
    out = scratch / (re.sub(r"\W+", "_", name) + ".json")
    command = [sys.executable, "benchmarks/fps.py", "--engine", str(export), "--backend", *backends, "--device"]
    command += ["cuda", "--video", video, "--frames", str(args.frames), "--warmup", str(args.warmup)]
    command += ["--streams", *counts] if counts else []
    step = run_step(name, [*command, "--json", str(out)], FPS_S, budget, env, scratch)
    return step, json.loads(out.read_text(encoding="utf-8")) if step.status == "ok" else {}


def fps_rows(
    export: Path, backends: list[str], video: str, args: argparse.Namespace, budget: Budget, env: dict, scratch: Path
) -> tuple[list[Step], list[dict]]:
    """``fps.py --device cuda`` on ``export``: all backends in one call, or one by one if that fails."""
    step, found = fps_call(export, backends, video, args, budget, env, scratch)
    rows = found.get("rows", [])
    if step.status != "failed" or len(backends) == 1:  # a timeout would only time out again
        return [step], rows
    steps = [step]
    for backend in backends:
        step, found = fps_call(export, [backend], video, args, budget, env, scratch)
        steps.append(step)
        rows += found.get("rows", [])
    return steps, rows


def _cell(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    """The results page: versions, steps, fps rows."""
    info = result["versions"]
    lines = [f"# GPU check: {info['gpu']}", "", f"`{' '.join(result['command'])}`, {result['seconds']:.0f} s", ""]
    lines += ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in info.items()] + [""]
    lines += [f"CUDA tests: {result['tests']}", "", "| step | status | s | message |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['message']} |" for s in result["steps"]]
    lines += ["", "| export | precision | backend | fps | ms/frame | p50 ms | p99 ms | frame engine ms |"]
    lines[-1] += " temporal engine ms | peak CUDA MiB |"
    lines.append("|" + "---|" * 10)
    for row in result["rows"]:
        stages = row["stages_ms"]
        cells = [row["export"], row["precision"], row["description"], _cell(row["fps"]), _cell(row["per_frame_ms"], 2)]
        cells += [_cell(row["latency_ms"]["p50"], 2), _cell(row["latency_ms"]["p99"], 2)]
        cells += [_cell(stages.get("frame_engine"), 2), _cell(stages.get("temporal_engine"), 2)]
        cells.append(_cell(row["peak_cuda_mib"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("stream_rows"):
        lines += ["", "| export | precision | backend | batch | streams | fps (all streams) | fps per stream |"]
        lines[-1] += " p50 ms | p95 ms | frame engine runs / frame |"
        lines.append("|" + "---|" * 10)
        for row in result["stream_rows"]:
            cells = [row["export"], row["precision"], row["description"], str(row["batch"]), str(row["streams"])]
            cells += [_cell(row["fps"]), _cell(row["fps_per_stream"])]
            cells += [_cell(row["latency_ms"]["p50"], 2), _cell(row["latency_ms"]["p95"], 2)]
            cells.append(_cell(row["frame_engine_runs_per_frame"], 2))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="benchmarks/results", help="results folder (default benchmarks/results)")
    parser.add_argument("--budget-s", type=float, default=450, help="seconds for all steps (default 450)")
    parser.add_argument("--frames", type=int, default=200, help="measured frames per fps row (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured frames first (default 20)")
    parser.add_argument("--calib-frames", type=int, default=32, help="int8 calibration frames (default 32)")
    return parser


def _check_machine(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SltnetError(
            f"gpu_check.py: torch {torch.__version__} sees no CUDA device here: run it on a machine with an NVIDIA GPU"
        )
    missing = [name for name in PROJECT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise SltnetError(
            f"gpu_check.py: this Python lacks {', '.join(missing)}, which the project imports "
            "(carry their wheels: docs/deployment.md#checking-on-a-gpu)"
        )
    if not Path(args.out_dir).is_dir():
        raise SltnetError(f"--out-dir {args.out_dir}: not a folder")
    if args.frames < 1 or args.warmup < 0 or args.calib_frames < 1 or args.budget_s <= 0:
        raise SltnetError("--frames, --calib-frames and --budget-s must be positive, --warmup not negative")


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_machine(args)
    from benchmarks.fps import synthetic_video
    from runtime.engines import tensorrt_unavailable
    from sltnet.atomic_io import atomic_write_text
    from sltnet.contract import Manifest

    budget = Budget(args.budget_s)
    info = versions()
    print(f"GPU check on {info['gpu']}: torch {info['torch']}, CUDA {info['cuda']}, driver {info['driver']}")
    steps: list[Step] = []
    rows: list[dict] = []
    stream_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sltnet-gpu-check-") as folder:
        scratch = Path(folder)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        env["SLTNET_DATA"] = str(scratch / "datasets")

        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", TEST_SELECTION]
        tests_step = run_step("cuda tests", [*pytest, *cuda_test_files()], TESTS_S, budget, env, scratch)
        steps.append(tests_step)
        tests = tests_summary(scratch / "cuda_tests.log") or tests_step.message

        synth = [sys.executable, "-c", SYNTH_MAIN, str(scratch / "datasets" / "synthetic"), "--split"]
        synth += [CALIBRATION_SPLIT, "--videos", "4", "--frames", "30", "--size", "256", "--seed", "1"]
        steps.append(run_step("calibration split", synth, SYNTH_S, budget, env, scratch))
        configs = {"small": (SMALL_CONFIG, ROOT / SMALL_WEIGHTS), "tiny": (TINY_CONFIG, tiny_weights(scratch))}
        videos: dict[tuple[int, int], str] = {}
        build_trt = tensorrt_unavailable() is None
        for precision in PRECISIONS:
            for name, (config, weights) in configs.items():
                export = scratch / f"{name}_{precision}"
                command = export_command(config, weights, export, precision, build_trt, args.calib_frames)
                cap = INT8_EXPORT_S if precision == "int8" else EXPORT_S
                steps.append(run_step(f"export {name} {precision}", command, cap, budget, env, scratch))
                if not (export / "manifest.json").is_file():
                    continue
                size = Manifest.load(export).input.size
                if size not in videos:
                    videos[size] = synthetic_video(folder, size, args.warmup + args.frames)
                fps_steps, found = fps_rows(
                    export, engine_backends(export, precision), videos[size], args, budget, env, scratch
                )
                steps += fps_steps
                rows += [dict(row, export=name, precision=precision) for row in found]
        for name in configs:
            export = scratch / f"{name}_fp32"
            if (export / "manifest.json").is_file():
                video = videos[Manifest.load(export).input.size]
                step, result = fps_call(export, ["torch"], video, args, budget, env, scratch, STREAMS)
                steps.append(step)
                stream_rows += [dict(row, export=name, precision="fp32") for row in result.get("stream_rows", [])]

    measured = {(row["export"], row["precision"], row["backend"]) for row in rows}
    passed = tests_step.status == "ok" and all((name, "fp32", "torch") in measured for name in configs)
    command = ["benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]
    result = {
        "versions": info,
        "command": command,
        "seconds": budget.elapsed(),
        "tests": tests,
        "steps": [step._asdict() for step in steps],
        "rows": rows,
        "stream_rows": stream_rows,
        "passed": passed,
    }
    stem = Path(args.out_dir) / f"gpu_check_{gpu_slug(info['gpu'])}"
    atomic_write_text(f"{stem}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(f"{stem}.md", markdown(result))
    print(f"[{budget.elapsed():5.0f} s] wrote {stem}.json and {stem}.md: {'passed' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
