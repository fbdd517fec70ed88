"""The TensorRT API the build and the runtime use: one list per module (``TENSORRT_BUILD_API``,
``TENSORRT_RUNTIME_API``) that a scan of the code keeps complete, that holds nothing the code does
not use, and that, where the ``tensorrt`` module imports (TensorRT 10 or 11; no GPU needed), names
only attributes the module has. Also the version rules of :func:`runtime.engines.tensorrt_unavailable`
and the strongly typed network flags, on a stand-in module."""

import ast
import sys
import types
from pathlib import Path

import pytest
import torch

from export import tensorrt_build
from export.tensorrt_build import TENSORRT_BUILD_API, network_flags
from runtime import engines
from runtime.engines import TENSORRT_RUNTIME_API, tensorrt_unavailable

ROOT = Path(__file__).resolve().parent.parent
#: (file, its API list, the definitions in it that hold TensorRT code; None: the whole file)
TENSORRT_CODE = [
    (Path(tensorrt_build.__file__), TENSORRT_BUILD_API, None),
    (
        Path(engines.__file__),
        TENSORRT_RUNTIME_API,
        {"_tensorrt_dtype_names", "TensorRTEngine", "tensorrt_unavailable", "tensorrt_backend"},
    ),
]
#: Attribute names in the TensorRT code that are not TensorRT's although a TensorRT class has a
#: member of that name: ``TensorRTEngine.engine`` (IExecutionContext also has an ``engine``).
NOT_TENSORRT = {"engine"}
CODE_IDS = [path.name for path, _, _ in TENSORRT_CODE]
MODULE_NAME = "trt"  # the name the code imports tensorrt as


def _dotted(node: ast.expr) -> list[str] | None:
    """``trt.A.b`` -> ["A", "b"]; None for a chain that does not start at the module."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return parts[::-1] if isinstance(node, ast.Name) and node.id == MODULE_NAME else None


def tensorrt_uses(path: Path, scope: set[str] | None) -> tuple[set[str], set[str]]:
    """The ``trt.…`` paths (every prefix of each chain) and the other attribute names used in the
    TensorRT code of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = [tree] if scope is None else [node for node in tree.body if getattr(node, "name", None) in scope]
    assert scope is None or {node.name for node in roots} == scope, f"{path}: definitions renamed?"
    module_paths: set[str] = set()
    members: set[str] = set()
    for root in roots:
        for node in ast.walk(root):
            if not isinstance(node, ast.Attribute):
                continue
            parts = _dotted(node)
            if parts is None:
                if not node.attr.startswith("__"):  # super().__init__ and the like
                    members.add(node.attr)
            else:
                module_paths.add(".".join(parts))
    return module_paths, members


def _prefixes(path: str) -> set[str]:
    parts = path.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


@pytest.mark.parametrize("path, api, scope", TENSORRT_CODE, ids=CODE_IDS)
def test_every_tensorrt_module_attribute_the_code_uses_is_listed(path, api, scope):
    module_paths, _ = tensorrt_uses(path, scope)
    listed = set().union(*(_prefixes(entry) for entry in api))
    assert module_paths - listed == set(), f"add these to the API list of {path.name}"


@pytest.mark.parametrize("path, api, scope", TENSORRT_CODE, ids=CODE_IDS)
def test_every_listed_name_is_used_by_the_code(path, api, scope):
    module_paths, members = tensorrt_uses(path, scope)
    unused = [
        entry
        for entry in api
        if entry not in module_paths and ("." not in entry or entry.split(".")[-1] not in members)
    ]
    assert unused == [], f"{path.name} no longer uses these"


@pytest.mark.parametrize("path, api, scope", TENSORRT_CODE, ids=CODE_IDS)
def test_no_precision_builder_flags_or_calibrators(path, api, scope):
    """Precision is the ONNX graph's (strongly typed networks): TensorRT 11 has neither."""
    module_paths, members = tensorrt_uses(path, scope)
    assert not [p for p in module_paths if p.startswith(("BuilderFlag", "IInt8", "CalibrationAlgoType"))]
    assert not members & {"set_flag", "int8_calibrator", "set_calibration_profile", "set_quantization_flag"}


def _resolve(module, entry: str):
    value = module
    for part in entry.split("."):
        value = getattr(value, part)
    return value


def test_every_listed_attribute_exists_in_the_installed_tensorrt():
    trt = pytest.importorskip("tensorrt", reason="the tensorrt package is not installed (pip install '.[trt]')")
    missing = []
    for _, api, _ in TENSORRT_CODE:
        for entry in api:
            try:
                _resolve(trt, entry)
            except AttributeError:
                missing.append(entry)
    assert missing == [], f"tensorrt {trt.__version__} lacks these"


@pytest.mark.parametrize("path, api, scope", TENSORRT_CODE, ids=CODE_IDS)
def test_every_member_of_a_listed_class_that_the_code_uses_is_listed(path, api, scope):
    """A new call on a TensorRT object (say ``engine.get_tensor_location``) must join the list."""
    trt = pytest.importorskip("tensorrt", reason="the tensorrt package is not installed (pip install '.[trt]')")
    _, members = tensorrt_uses(path, scope)
    classes = {entry.split(".")[0] for entry in api if "." in entry}
    listed = {entry.split(".")[-1] for entry in api}
    of_tensorrt = {name for name in members - NOT_TENSORRT for cls in classes if hasattr(getattr(trt, cls), name)}
    assert of_tensorrt - listed == set(), f"tensorrt {trt.__version__} members used in {path.name} but not listed"


# ------------------------------------------------------------------------------------------------
# Versions, on a stand-in ``tensorrt`` module
# ------------------------------------------------------------------------------------------------
def fake_tensorrt(version: str) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = version  # type: ignore[attr-defined]
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)  # type: ignore[attr-defined]
    return module


def export_with_plans(version: str | None):
    """The parts of a manifest that :func:`tensorrt_unavailable` reads."""
    tensorrt = None if version is None else types.SimpleNamespace(version=version, device="GPU")
    frame = types.SimpleNamespace(tensorrt=None if version is None else "frame.engine")
    return types.SimpleNamespace(engines=types.SimpleNamespace(frame=frame), tensorrt=tensorrt)


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0.post12.dev1", "12.0.0"])
def test_tensorrt_other_than_10_or_11_is_refused_in_one_line(monkeypatch, version):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version))
    reason = tensorrt_unavailable()
    assert reason == (f"tensorrt {version} is installed, sltnet uses the TensorRT 10 and 11 API ('tensorrt>=10,<12')")


def test_missing_tensorrt_names_the_requirement(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    reason = tensorrt_unavailable()
    assert reason is not None and reason.endswith("install 'tensorrt>=10,<12'") and "\n" not in reason


@pytest.mark.parametrize("installed", ["10.16.1.11", "11.4.0.106"])
def test_plans_run_only_on_the_major_version_that_built_them(monkeypatch, installed):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(installed))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tensorrt_unavailable() is None
    assert tensorrt_unavailable(export_with_plans(installed)) is None  # type: ignore[arg-type]
    other = "11.4.0.106" if installed.startswith("10.") else "10.16.1.11"
    assert tensorrt_unavailable(export_with_plans(other)) == (  # type: ignore[arg-type]
        f"the export's plans were built by TensorRT {other}, this is TensorRT {installed}: plans do not move "
        "between TensorRT versions (export again with --format trt here)"
    )
    assert tensorrt_unavailable(export_with_plans(None)) == (  # type: ignore[arg-type]
        "the export has no TensorRT engines (sltnet-export --format trt)"
    )


def test_networks_are_strongly_typed_on_10_and_flagless_on_11():
    """TensorRT 10 builds weakly typed unless asked; TensorRT 11 only strongly typed, its flag deprecated."""
    assert network_flags(fake_tensorrt("10.16.1.11")) == 1 << 1
    assert network_flags(fake_tensorrt("11.4.0.106")) == 0


def test_the_trt_extra_allows_tensorrt_10_and_11():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'trt = ["tensorrt>=10.0,<12"]' in pyproject
