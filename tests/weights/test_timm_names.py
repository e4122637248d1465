"""timm's model names without importing timm: read from its sources they are its registry exactly; the names
timm itself holds, once saved, answer the next check; the check accepts tags and deprecated names timm builds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torchgraft.weights.timm_names import (
    UnknownModelError,
    _from_registry,
    _from_sources,
    _names_file,
    _timm_install,
    check_timm_name,
    remember_timm_names,
    timm_model_names,
)

timm = pytest.importorskip("timm")


def test_the_sources_give_timms_registry_exactly():
    """If a timm release registers models another way, this fails (and the check would refuse real names)."""
    version, location = _timm_install()
    assert version == timm.__version__
    read = _from_sources(location)
    held = _from_registry(timm)
    assert set(read.models) == set(timm.list_models()) and len(read.models) > 1000
    assert set(read.deprecated) == set(held.deprecated) and read.deprecated
    for name in read.deprecated:
        assert timm.is_model(name), name


def test_the_check_answers_without_timm_and_knows_tags_and_deprecated_names(tmp_path):
    deprecated = _from_sources(_timm_install()[1]).deprecated[0]
    code = (
        "import sys\nfrom torchgraft.weights.timm_names import check_timm_name, UnknownModelError\n"
        f"ok = [check_timm_name(n) for n in ('convnext_tiny', 'convnext_tiny.fb_in22k', {deprecated!r})]\n"
        "try:\n    check_timm_name('convnext_tinyy')\nexcept UnknownModelError as e:\n    print(e)\n"
        "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'numpy') if m in sys.modules))"
    )
    env = {"TORCHGRAFT_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    refusal, imported = result.stdout.strip().splitlines()
    assert refusal.startswith("unknown timm model 'convnext_tinyy'; close names: convnext_tiny")
    assert imported == "[]"


def test_names_timm_held_are_saved_and_answer_the_next_check(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_CACHE", str(tmp_path))
    file = _names_file(*_timm_install())
    assert not file.exists()
    remember_timm_names(timm)
    saved = json.loads(file.read_text())
    assert set(saved["models"]) == set(timm.list_models())
    assert timm_model_names().models == saved["models"]
    # the saved list is what answers (a name only it holds passes; one it lacks is refused)
    file.write_text(json.dumps({"models": ["only_this_net"], "deprecated": []}))
    assert check_timm_name("only_this_net") == "only_this_net"
    with pytest.raises(UnknownModelError, match="unknown timm model 'convnext_tiny'"):
        check_timm_name("convnext_tiny")
    file.write_text("{damaged")  # a damaged file: read from the sources again
    assert check_timm_name("convnext_tiny") == "convnext_tiny"
