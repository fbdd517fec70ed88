"""No tool writes an output over one of its inputs or over another of its outputs (links resolved):
each refuses in one line, exit status 2, before anything is written, and leaves no temporary file."""

import os
from pathlib import Path

import pytest

from benchmarks import accuracy, fps
from export.cli import main as export_main
from sltnet.tools.convert import main as convert_main
from sltnet.tools.eval import main as eval_main

from helpers import TINY_SLTNET

INPUT_BYTES = b"an input that must survive\n"


def make_inputs(folder: Path, *names: str) -> dict:
    paths = {}
    for name in names:
        paths[name] = folder / name
        paths[name].write_bytes(INPUT_BYTES)
    return paths


# (tool, file names to create, argv template with {name} placeholders, the option that clobbers)
CASES = {
    "eval --output is --gt": (
        eval_main,
        ("gt.json", "dets.json"),
        "--gt {gt.json} --detections {dets.json} --output {gt.json}",
    ),
    "eval --output is --detections": (
        eval_main,
        ("gt.json", "dets.json"),
        "--gt {gt.json} --detections {dets.json} --output {dets.json}",
    ),
    "eval --output is a link to --gt": (
        eval_main,
        ("gt.json", "dets.json"),
        "--gt {gt.json} --detections {dets.json} --output {link}",
    ),
    "convert to-vid OUT_TXT is --gt": (
        convert_main,
        ("dets.json", "gt.json"),
        "to-vid {dets.json} --gt {gt.json} {gt.json}",
    ),
    "convert to-vid OUT_TXT is DETECTIONS_JSON": (
        convert_main,
        ("dets.json", "gt.json"),
        "to-vid {dets.json} --gt {gt.json} {dets.json}",
    ),
    "convert half-weights OUT is WEIGHTS": (convert_main, ("w.pt",), "half-weights {w.pt} {w.pt}"),
    "convert half-weights OUT is a link to WEIGHTS": (convert_main, ("w.pt",), "half-weights {w.pt} {link}"),
    "convert d2-checkpoint OUT is CHECKPOINT": (convert_main, ("m.pth",), "d2-checkpoint {m.pth} {m.pth}"),
    "convert d2-checkpoint --config-out is --config-file": (
        convert_main,
        ("m.pth", "d2.yaml"),
        "d2-checkpoint {m.pth} out.pt --config-file {d2.yaml} --config-out {d2.yaml}",
    ),
    "convert d2-checkpoint --config-out is OUT": (
        convert_main,
        ("m.pth", "d2.yaml"),
        "d2-checkpoint {m.pth} {out.pt} --config-file {d2.yaml} --config-out {out.pt}",
    ),
    "convert vid-to-stcoco OUT_JSON is --image-set": (
        convert_main,
        ("val.txt",),
        "vid-to-stcoco annotations {val.txt} --image-set {val.txt}",
    ),
    "benchmarks/fps.py --json is --video": (fps.main, ("clip.mp4",), "--video {clip.mp4} --json {clip.mp4}"),
    "benchmarks/accuracy.py --markdown is --json": (
        accuracy.main,
        ("table.md",),
        "--json {table.md} --markdown {table.md}",
    ),
    "export --out holds the weights": (
        export_main,
        ("engines/w.pt",),
        f"--config-file {TINY_SLTNET} --weights {{engines/w.pt}} --out {{engines}}",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_output_never_replaces_an_input(case, tmp_path, capsys, monkeypatch):
    tool, names, template = CASES[case]
    (tmp_path / "engines").mkdir()
    inputs = make_inputs(tmp_path, *names)
    first = inputs[names[0]]
    (tmp_path / "link").symlink_to(first)
    values = {name: str(path) for name, path in inputs.items()}
    values.update(
        {"link": str(tmp_path / "link"), "out.pt": str(tmp_path / "out.pt"), "engines": str(tmp_path / "engines")}
    )
    argv = [values[part.strip("{}")] if part.startswith("{") else part for part in template.split()]
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    status = tool(argv)
    errors = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert any(rule in errors[0] for rule in ("never replaces an input", "replaced as a whole", "its own path"))
    for path in inputs.values():
        assert path.read_bytes() == INPUT_BYTES
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not (tmp_path / "out.pt").exists()


def test_two_outputs_may_not_share_a_path(tmp_path, capsys):
    inputs = make_inputs(tmp_path, "gt.json", "dets.json")
    same = str(tmp_path / "metrics.json")
    argv = ["--config-file", TINY_SLTNET, "--gt", str(inputs["gt.json"]), "--output", same, "--detections-out", same]
    assert eval_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --detections-out ") and "give each output its own path" in error
    assert not os.path.exists(same)
