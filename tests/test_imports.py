"""Import cost is structure, not luck: ``import torchgraft`` and the command line's parsers pull in none of the
heavy optional libraries (and ``--help`` not even torch), every public name still resolves, and the lazy
re-export tables match the ``TYPE_CHECKING`` imports and ``__all__`` they stand for."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import torchgraft

SRC = Path(torchgraft.__file__).resolve().parent
HEAVY = ("torchmetrics", "torchvision", "transformers", "matplotlib", "timm", "scipy", "onnx", "onnxruntime")
LAZY_PACKAGES = ("torchgraft", "torchgraft.app", "torchgraft.data", "torchgraft.train", "torchgraft.weights")


def _imported_after(code: str) -> set[str]:
    """The top-level names of the modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_import_torchgraft_imports_no_heavy_library():
    loaded = _imported_after("import torchgraft")
    assert not loaded & {*HEAVY, "torch"}, sorted(loaded & {*HEAVY, "torch"})


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["lr-find", "--help"], ["report", "--help"]]
)
def test_help_imports_no_torch(argv):
    code = (
        "import contextlib, io\nfrom torchgraft.cli.main import main\n"
        f"with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n    main({argv!r})"
    )
    loaded = _imported_after(code)
    assert not loaded & {*HEAVY, "torch", "numpy", "PIL"}, sorted(loaded & {*HEAVY, "torch", "numpy", "PIL"})


def test_python_m_torchgraft_help_answers_without_torch():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "torchgraft", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "train" in result.stdout, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported and "torchgraft.cli.main" in imported


def test_graft_imports_no_metrics_or_vision():
    """The core (grafting, layer groups, freezing) stays free of torchvision and torchmetrics."""
    loaded = _imported_after("import torchgraft\ntorchgraft.graft, torchgraft.layer_groups, torchgraft.freeze")
    assert "torch" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_top_level_names_are_the_objects_of_their_modules():
    assert torchgraft.graft is importlib.import_module("torchgraft.grafting.surgery").graft
    assert torchgraft.describe is importlib.import_module("torchgraft.tune.describe").describe
    assert torchgraft.deploy is importlib.import_module("torchgraft.ship.deploy").deploy
    assert torchgraft.distributed is importlib.import_module("torchgraft.train.distributed")


def _type_checking_imports(path: Path) -> dict[str, set[str]]:
    tree = ast.parse(path.read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    found: dict[str, set[str]] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        found.setdefault(str(node.module), set()).update(a.asname or a.name for a in node.names)
    return found


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_tables_match_the_type_checking_imports_and_all(package):
    module = importlib.import_module(package)
    path = Path(module.__file__)
    declared = {m: set(names) for m, names in module._EXPORTS.items()}
    for name, target in getattr(module, "_MODULES", {}).items():
        parent, _, leaf = target.rpartition(".")
        assert leaf == name
        declared.setdefault(parent, set()).add(name)
    assert _type_checking_imports(path) == declared
    assert set(module.__all__) - {"__version__"} == set().union(*declared.values())


def test_option_vocabularies_are_the_ones_the_modules_check():
    from torchgraft import choices
    from torchgraft.data.images import CHECKS
    from torchgraft.grafting.decoders import DECODERS
    from torchgraft.grafting.detector import DETECTOR_BATCH_NORM, DETECTOR_HEADS
    from torchgraft.ship.export import ADAPTER_EXPORTS
    from torchgraft.ship.program import DEPLOY_FORMATS
    from torchgraft.tasks import TARGET_LAYOUTS, TASKS
    from torchgraft.train.placement import BATCHNORM_MODES, STRATEGIES

    assert (CHECKS, DECODERS, ADAPTER_EXPORTS, DEPLOY_FORMATS) == (
        choices.CHECKS,
        choices.DECODERS,
        choices.ADAPTER_EXPORTS,
        choices.DEPLOY_FORMATS,
    )
    assert (BATCHNORM_MODES, STRATEGIES) == (choices.BATCHNORM_MODES, choices.STRATEGIES)
    assert (DETECTOR_HEADS, DETECTOR_BATCH_NORM) == (choices.DETECTOR_HEADS, choices.DETECTOR_BATCH_NORM)
    builtin = {n for n, t in TASKS.items() if t.__module__.startswith("torchgraft.tasks.")}
    assert builtin == set(choices.BUILT_IN_TASKS) == set(TARGET_LAYOUTS)
    assert set(choices.task_names()) == set(TASKS)  # the registry's names once it is imported


def test_a_run_reaches_its_first_step_without_torchmetrics():
    """torchmetrics (2-3 s with the scipy and transformers it imports) waits for the first validation batch:
    every module a ``torchgraft train`` run imports before its first step is free of it, and building a metric
    brings it in."""
    modules = "torchgraft.cli.train, torchgraft.app.prepare, torchgraft.app.run, torchgraft.train.learner"
    before = _imported_after(f"import {modules}\nimport torchgraft.tasks")
    assert "torchmetrics" not in before
    after = _imported_after(
        "import torch\nfrom torchgraft.tasks import Classification\nfrom torchgraft.tasks.metrics import MetricSet\n"
        "m = MetricSet(Classification(), ['accuracy'])\nm.update(torch.eye(3), torch.arange(3))\n"
        "assert m.compute() == {'accuracy': 1.0}"
    )
    assert "torchmetrics" in after
