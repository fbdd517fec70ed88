"""The README's results blocks are generated from the benchmarks' JSON (``benchmarks/readme_results.py``)."""

import json

import pytest

from benchmarks import readme_results

MACHINE = {
    "cpu": "Test CPU",
    "cores": 2,
    "threads": 2,
    "torch": "9.9",
    "onnxruntime": "1.0",
    "command": ["b.py", "--x"],
}


def test_the_readme_blocks_are_what_the_committed_json_gives():
    text = readme_results.README.read_text(encoding="utf-8")
    names = [match["name"] for match in readme_results.BLOCK.finditer(text)]
    assert {"accuracy_small", "fps_small_cpu"} <= set(names)
    assert readme_results.render_readme(text) == text, "run python benchmarks/readme_results.py"


def test_a_block_is_regenerated_from_its_json(tmp_path):
    report = {"machine": MACHINE, "markdown": "| a | b |\n|---|---|\n| 1.5 | 2.5 |\n"}
    (tmp_path / "speed.json").write_text(json.dumps(report))
    text = "intro\n<!-- BEGIN results: speed -->\nstale 0.1\n<!-- END results: speed -->\noutro\n"
    rendered = readme_results.render_readme(text, tmp_path)
    assert "stale" not in rendered and rendered.startswith("intro\n") and rendered.endswith("outro\n")
    assert "| 1.5 | 2.5 |" in rendered
    assert "Test CPU (2 cores, 2 threads), torch 9.9, onnxruntime 1.0, with `python b.py --x`." in rendered
    assert readme_results.render_readme(rendered, tmp_path) == rendered


def test_a_block_without_its_json_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="missing.json: not found"):
        readme_results.render_readme("<!-- BEGIN results: missing -->\n<!-- END results: missing -->\n", tmp_path)


def test_the_machine_line_names_the_cpu_instruction_sets(tmp_path):
    """int8 speed depends on the CPU's integer instructions: the sentence names those recorded."""
    machine = {**MACHINE, "cpu_features": ["AVX2", "AVX-512 VNNI"]}
    assert readme_results.machine_line(machine).startswith(
        "Measured on Test CPU (2 cores, AVX2, AVX-512 VNNI, 2 threads), torch 9.9"
    )
