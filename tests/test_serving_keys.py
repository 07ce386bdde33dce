"""API keys of `medstack serve-model` below HTTP: reading them, checking one, reloading them, and which addresses
need them. No server, no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pytest

from medstack.serving.keys import ApiKeyError, ApiKeys, check_exposure, is_loopback, load_api_keys, parse_keys, \
    read_keys

KEY_A = "ward3-viewer-0123456789abcdef"
KEY_B = "pacs-gateway-fedcba9876543210"
KEY_C = "rotated-in-7f3a9c2e5b1d4860"


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(text)
    return path


def test_a_key_file_skips_blank_lines_and_comments_and_keeps_the_order():
    text = f"# clients of ward 3\n{KEY_A}\n\n   \n  {KEY_B}  \r\n# {KEY_C} retired\n{KEY_A}\n"
    assert parse_keys(text, "keys.txt") == [KEY_A, KEY_B]


@pytest.mark.parametrize("line, words", [
    ("short-key", "line 2: a key of 9 characters is too short, use at least 16"),
    (f"{KEY_A} # the viewer", "line 2: a key must be printable ASCII without spaces"),
    (f"clé-{KEY_A}", "line 2: a key must be printable ASCII without spaces"),
])
def test_a_bad_key_is_refused_by_its_line_and_never_repeated(line, words):
    with pytest.raises(ApiKeyError, match=words) as caught:
        parse_keys(f"{KEY_B}\n{line}\n", "API key file keys.txt")
    assert line.split()[0] not in str(caught.value) and "keys.txt" in str(caught.value)


def test_keys_from_the_file_and_the_environment_are_all_valid(tmp_path):
    path = _file(tmp_path, f"{KEY_A}\n")
    env = {"MEDSTACK_API_KEYS": f" {KEY_B},\n{KEY_C} ,{KEY_A}"}
    assert read_keys(path, env) == [KEY_A, KEY_B, KEY_C]
    assert read_keys(None, env) == [KEY_B, KEY_C, KEY_A]
    assert read_keys(path, {}) == [KEY_A]
    assert read_keys(None, {}) is None and read_keys(None, {"MEDSTACK_API_KEYS": "  "}) is None  # no source
    with pytest.raises(ApiKeyError, match=r"\$MEDSTACK_API_KEYS, item 2: .* too short"):
        read_keys(None, {"MEDSTACK_API_KEYS": f"{KEY_A},tiny"})
    with pytest.raises(ApiKeyError, match=r"\$MEDSTACK_API_KEYS holds no key"):
        read_keys(None, {"MEDSTACK_API_KEYS": " , ,"})


def test_an_unusable_key_file_is_one_clear_error(tmp_path):
    with pytest.raises(ApiKeyError, match="cannot read the API key file .*nowhere.txt: No such file"):
        read_keys(tmp_path / "nowhere.txt", {})
    with pytest.raises(ApiKeyError, match="holds no key"):
        read_keys(_file(tmp_path, "# nothing yet\n\n"), {})
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00key")
    with pytest.raises(ApiKeyError, match="is not UTF-8 text"):
        read_keys(tmp_path / "binary.txt", {})
    with pytest.raises(ApiKeyError, match="cannot read the API key file"):
        read_keys(tmp_path, {})  # a folder


def test_check_accepts_every_key_and_nothing_else(tmp_path):
    keys = load_api_keys(_file(tmp_path, f"{KEY_A}\n{KEY_B}\n"), {})
    assert len(keys) == 2 and keys.sources == str(tmp_path / "keys.txt")
    assert keys.check(KEY_A) and keys.check(KEY_B)
    for wrong in [None, "", KEY_C, KEY_A[:-1], KEY_A + "x", KEY_A.upper(), " " + KEY_A, "é" * 20]:
        assert not keys.check(wrong), wrong
    assert load_api_keys(None, {}) is None


def test_reload_rotates_keys_and_keeps_them_when_the_file_would_leave_none(tmp_path):
    path = _file(tmp_path, f"{KEY_A}\n")
    keys = load_api_keys(path, {})
    assert keys.reload() == {"keys": 1, "changed": False, "kept": None}
    path.write_text(f"{KEY_A}\n{KEY_B}\n")  # the new key first, both valid while clients move over
    assert keys.reload() == {"keys": 2, "changed": True, "kept": None} and keys.check(KEY_A) and keys.check(KEY_B)
    path.write_text(f"{KEY_B}\n")  # then the old one goes
    assert keys.reload()["changed"] and keys.check(KEY_B) and not keys.check(KEY_A)
    for broken in ["# every key removed\n", f"{KEY_C}\nshort\n"]:
        path.write_text(broken)
        event = keys.reload()
        assert event["keys"] == 1 and not event["changed"] and event["kept"].startswith("kept the 1 key(s) in use: ")
        assert keys.check(KEY_B) and not keys.check(KEY_C)
    path.unlink()
    assert "cannot read the API key file" in keys.reload()["kept"] and keys.check(KEY_B)


def test_keys_from_the_environment_alone_reload_as_they_were():
    keys = ApiKeys(None, {"MEDSTACK_API_KEYS": KEY_A}, [KEY_A])
    assert keys.sources == "$MEDSTACK_API_KEYS"
    assert keys.reload() == {"keys": 1, "changed": False, "kept": None} and keys.check(KEY_A)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LocalHost", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("192.168.0.7", False),
    ("fe80::1", False), ("pacs.hospital.example", False), ("localhost.hospital.example", False), ("", False),
])
def test_only_this_machines_addresses_count_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_an_exposed_address_needs_keys_or_insecure():
    assert check_exposure("127.0.0.1", has_keys=False, insecure=False) is None
    assert check_exposure("0.0.0.0", has_keys=True, insecure=False) is None
    assert check_exposure("0.0.0.0", has_keys=True, insecure=True) is None  # keys are required all the same
    with pytest.raises(ApiKeyError) as refused:
        check_exposure("0.0.0.0", has_keys=False, insecure=False)
    message = str(refused.value)
    assert "\n" not in message and "--host 0.0.0.0 is not loopback" in message
    assert "--api-key-file" in message and "$MEDSTACK_API_KEYS" in message and "--insecure" in message
    warning = check_exposure("10.1.2.3", has_keys=False, insecure=True)
    assert warning.startswith("no API key on 10.1.2.3 (--insecure)") and "POST /reload" in warning
