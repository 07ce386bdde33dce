"""Every sub-command builds its own flags: its ``--help`` names what its flags do for it, and no other's."""

from __future__ import annotations

import argparse

import pytest

from medstack.cli import build_parser

# Phrases that describe one command's -q/-v; each may appear in that command's help only.
OWN_PHRASES = {
    "run": ["print only the run folder", "show Prefect's logs"],
    "serve-model": ["no access log", "debug logs of the HTTP server"],
    "check-config": ["no notes on what --data switched"],
    "serve": ["no notes on what --data switched"],
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _help(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())  # argparse wraps lines: compare on single spaces


def test_no_two_commands_share_an_action_object():
    seen: dict[int, str] = {}
    for name, parser in _subparsers().items():
        for action in parser._actions:
            assert id(action) not in seen, f"{name} shares {action.option_strings} with {seen[id(action)]}"
            seen[id(action)] = name


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_help_names_only_this_commands_behaviour(command):
    text = _help(_subparsers()[command])
    for phrase in OWN_PHRASES.get(command, []):
        assert phrase in text, (command, phrase)
    for other, phrases in OWN_PHRASES.items():
        for phrase in phrases:
            if phrase not in OWN_PHRASES.get(command, []):
                assert phrase not in text, f"`medstack {command} --help` describes {other}: {phrase!r}"


def test_building_serve_model_leaves_predicts_flags_alone():
    """The bug this guards: serve-model rewrote the shared -q/-v help, so `predict --help` described the server."""
    commands = _subparsers()
    predict = _help(commands["predict"])
    assert "--debug" in predict and "HTTP server" not in predict and "access log" not in predict
    assert "--quiet" not in predict  # -q/-v would do nothing for predict, so it does not take them
    assert "--quiet" in _help(commands["serve-model"]) and "--verbose" in _help(commands["run"])


def test_every_command_parses_debug_and_has_a_verbosity():
    for name, parser in _subparsers().items():
        required = [a for a in parser._actions if a.required]
        assert all(a.dest for a in required)
        assert parser.get_default("verbosity") == 0, name
