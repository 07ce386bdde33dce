"""The MedstackError family: each error's exit code, kind and hint come from its type, never from its wording."""

from __future__ import annotations

import ast
import io
import random
import signal
import string
from pathlib import Path

import pytest
from pydantic import ValidationError

from medstack.cli import main
from medstack.config import ConfigError, RunConfig
from medstack.console import errors
from medstack.data.dataset import DataError
from medstack.data.download import ChecksumError, DownloadError
from medstack.errors import MedstackError
from medstack.inference.inputs import InputError
from medstack.inference.registry import RegistryError
from medstack.inference.schema import BundleError
from medstack.models.smote import SmoteError
from medstack.outputs import OutputError
from medstack.serving.cli import ServeError
from medstack.serving.keys import ApiKeyError
from medstack.splits import SplitError

DATA_HINT = "fix the data (or the data.* keys of the config) and run again"
# The verdicts `medstack` gave before errors carried their own (docs/BAD_INPUTS.md), and those of the errors that
# inference/cli.py and serving/cli.py printed themselves (exit 2, the message alone: no kind, no hint).
VERDICTS = {
    DataError: (2, "data error", DATA_HINT),
    SplitError: (2, "split error",
                 "add images of the class named above, or lower split.folds / change split.fractions"),
    OutputError: (2, "output error",
                  "choose a writable folder: --output-dir DIR (run folders) or --cache-dir DIR (fold cache)"),
    SmoteError: (2, "data error", "a fold's training part holds a single image of a class: add images, lower "
                 "split.folds, or leave out the smote strategy"),
    DownloadError: (1, "download failed",
                    "check the network and try again, or download the file yourself and pass --data FILE.npz"),
    ChecksumError: (1, "download failed", "try again, or download the file yourself and pass it with --data FILE.npz"),
    ConfigError: (2, "config error", None),  # a validation error's hint: test_a_config_validation_error_names_keys
    BundleError: (2, None, None),
    InputError: (2, None, None),
    RegistryError: (2, None, None),
    ApiKeyError: (2, None, None),
    ServeError: (2, None, None),
}
OLD_BASES = {ValueError: [DataError, SplitError, SmoteError, ConfigError, BundleError, InputError, RegistryError,
                          ApiKeyError, ChecksumError, ServeError], OSError: [OutputError, DownloadError]}


def _every_subclass(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct} | _every_subclass(direct)}


def _random_message(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + " :./") for _ in range(rng.randint(1, 60)))


def test_the_error_base_imports_nothing_from_medstack():
    """medstack.errors is the bottom of the import graph, so the config (and every other layer) may import it."""
    tree = ast.parse(Path(errors.__file__).parents[1].joinpath("errors.py").read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert names and not [name for name in names if name.split(".")[0] == "medstack"], names


def test_every_medstack_error_states_its_own_verdict():
    """Every subclass (those above, and any added later) sets an exit code and a kind of its own (``None``: the
    message alone)."""
    found = _every_subclass(MedstackError)
    assert set(VERDICTS) <= found
    for cls in found:
        assert cls.exit_code in (errors.BAD_INPUT, errors.RUN_FAILED) and cls.kind != MedstackError.kind, cls
        exc = cls("some message")
        assert errors.judge(exc) == errors.Verdict(cls.exit_code, cls.kind, exc.hint), cls


@pytest.mark.parametrize("cls", list(VERDICTS), ids=lambda cls: cls.__name__)
def test_the_verdict_comes_from_the_type_whatever_the_message(cls):
    """Today's exit code, kind and hint for any wording, including another error's old trigger text."""
    rng = random.Random(cls.__name__)
    messages = [_random_message(rng) for _ in range(5)] + ["SMOTE needs at least 2", "download of x failed", ""]
    for message in messages:
        stream = io.StringIO()
        assert errors.judge(cls(message)) == errors.Verdict(*VERDICTS[cls]), message
        assert errors.report(cls(message), stream=stream) == VERDICTS[cls][0]
        kind = VERDICTS[cls][1]
        if kind is None:  # the message alone, one line
            assert stream.getvalue() == f"medstack: {message.strip() or cls.__name__}\n"
        else:
            assert stream.getvalue().startswith(f"medstack: {kind}: ")


@pytest.mark.parametrize("base", list(OLD_BASES), ids=lambda base: base.__name__)
def test_errors_keep_their_old_bases(base):
    """Code that catches ValueError or OSError (the load_dataset retry: an OSError is retried) still does."""
    for cls in OLD_BASES[base]:
        assert issubclass(cls, base), cls


def test_lookalike_messages_of_other_types_are_bugs():
    """A plain ValueError that reads like the SMOTE error, or an OSError like a failed download, is not one."""
    smote = errors.judge(ValueError("SMOTE needs at least 2 samples per class, class counts are [5, 1]"))
    assert smote == errors.Verdict(1, "run failed (ValueError)", smote.hint) and "bug" in smote.hint
    download = errors.judge(OSError("download of https://x failed: timed out"))
    assert download.code == 1 and download.kind == "run failed (OSError)"
    assert errors.judge(RuntimeError("config error: data error")).kind == "run failed (RuntimeError)"


def test_a_dead_training_process_is_named_with_what_to_change_not_called_a_bug():
    """What the processes runner raises when the system kills a worker (seen by SIGKILL of one mid-run)."""
    from concurrent.futures.process import BrokenProcessPool

    dead = errors.judge(BrokenProcessPool("A process in the process pool was terminated abruptly while the future "
                                          "was running or pending."))
    assert (dead.code, dead.kind) == (1, "a training process died")
    assert "runtime.max_workers" in dead.hint and "bug" not in dead.hint


def test_a_config_validation_error_names_keys_to_fix_and_others_do_not():
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate({"trainig": {}})
    try:
        raise ConfigError("c.yaml: invalid config") from info.value
    except ConfigError as exc:
        assert errors.judge(exc).hint.startswith("fix the key(s) named above")
    assert errors.judge(ConfigError("config file not found: c.yaml")).hint is None


def test_predict_reports_a_bundle_error_through_the_one_path(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--output", "x.csv"]) == 2
    [line] = capsys.readouterr().err.splitlines()  # one line, as when the command printed it itself
    assert line.startswith(f"medstack: {tmp_path}/model.json: not found; is {tmp_path} a medstack run folder?")


def test_serve_model_reports_a_bundle_error_through_the_one_path(tmp_path, capsys):
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)}  # serve-model sets both
    try:
        assert main(["serve-model", "--model", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert capsys.readouterr().err.splitlines() == [f"medstack: {tmp_path / 'nowhere'}: no such run folder (expected "
                                                     "a folder holding model.json, or <name>@<alias>)"]
