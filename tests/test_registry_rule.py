"""Where the registry lives: one rule (flag or ``registry.path``, else ``$MEDSTACK_REGISTRY``, else one per-user file
that does not depend on the working directory), used by the flow's auto-promotion and by every command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medstack.cli import build_parser
from medstack.config import RunConfig
from medstack.inference.promotion import registry_target
from medstack.inference.registry import REGISTRY_HELP, registry_path


@pytest.fixture
def no_registry_env(monkeypatch, tmp_path) -> Path:
    """``$MEDSTACK_REGISTRY`` unset and a private ``$XDG_DATA_HOME``; returns the default file this gives on Linux."""
    monkeypatch.delenv("MEDSTACK_REGISTRY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "medstack" / "registry.json"


def test_an_explicit_path_wins_and_a_relative_one_is_read_from_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSTACK_REGISTRY", str(tmp_path / "from-env.json"))
    assert registry_path(tmp_path / "flag.json") == tmp_path / "flag.json"
    monkeypatch.chdir(tmp_path)
    assert registry_path("sub/registry.json") == tmp_path / "sub" / "registry.json"


def test_the_environment_variable_comes_next(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSTACK_REGISTRY", str(tmp_path / "from-env.json"))
    assert registry_path() == registry_path(None) == tmp_path / "from-env.json"


@pytest.mark.skipif(sys.platform != "linux", reason="XDG_DATA_HOME is the Linux user data folder")
def test_the_default_is_one_file_per_user_whatever_the_working_directory(no_registry_env, monkeypatch, tmp_path):
    seen = []
    for cwd in (tmp_path, tmp_path / "elsewhere" / "deeper"):
        cwd.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(cwd)
        seen.append(registry_path())
    assert seen == [no_registry_env, no_registry_env]


def test_the_flow_promotes_into_the_same_file_not_beside_its_runs(no_registry_env, monkeypatch, tmp_path):
    """The bug this rule fixed: a run made with --output-dir recorded its promotion in <output_dir>/registry.json."""
    out = tmp_path / "runs-elsewhere"
    cfg = RunConfig.model_validate({"name": "chest", "runtime": {"output_dir": str(out)}, "registry": {"promote": "auto"}})
    assert registry_target(cfg) == ("chest", registry_path())
    named = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"name": "chest-xray"})})
    assert registry_target(named)[0] == "chest-xray"
    monkeypatch.setenv("MEDSTACK_REGISTRY", str(tmp_path / "team.json"))
    assert registry_target(cfg)[1] == tmp_path / "team.json"
    monkeypatch.chdir(tmp_path)
    relative = RunConfig.model_validate({"registry": {"path": "shared/registry.json"}})
    assert registry_target(relative)[1] == tmp_path / "shared" / "registry.json"


def test_every_registry_flag_states_the_rule():
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    helps = {name: next(a.help for a in command._actions if "--registry" in a.option_strings)
             for name, command in sub.choices.items()
             if any("--registry" in a.option_strings for a in command._actions)}
    assert set(helps) == {"predict", "promote", "export", "models", "serve-model", "evaluate"}
    assert set(helps.values()) == {REGISTRY_HELP}
    assert "$MEDSTACK_REGISTRY" in REGISTRY_HELP and "~/.local/share/medstack" in REGISTRY_HELP
    description = RunConfig.model_fields["registry"].annotation.model_fields["path"].description
    assert "$MEDSTACK_REGISTRY" in description and "output_dir" not in description
