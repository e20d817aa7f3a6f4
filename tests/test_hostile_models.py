"""A model file cannot run code: every crafted .keras file (tests/hostile.py, made here in
the test's folder) is refused by readout.load_model with one line naming the file, and
its payload, which would only create a marker file in that folder, never runs. Damaged
and foreign files are refused the same way."""

import keras
import pytest

import hostile
import readout


def assert_refused(path, folder):
    with pytest.raises(ValueError) as refused:
        readout.load_model(path)
    message = str(refused.value)
    assert path.name in message, message
    assert "\n" not in message.strip(), message
    assert not hostile.marker(folder).exists(), f"{path.name} ran code while loading"


@pytest.mark.parametrize("attack", sorted(hostile.ATTACKS))
def test_a_crafted_model_file_is_refused_and_runs_nothing(attack, tmp_path):
    path = hostile.ATTACKS[attack](tmp_path)
    assert not hostile.marker(tmp_path).exists()  # making the file ran nothing
    assert_refused(path, tmp_path)


@pytest.mark.parametrize("kind", sorted(hostile.BROKEN))
def test_a_damaged_or_foreign_model_file_is_refused_by_name(kind, tmp_path):
    assert_refused(hostile.BROKEN[kind](tmp_path), tmp_path)


def test_the_payload_runs_when_safe_mode_is_off(tmp_path):
    """The check above can fail: the same bytecode Lambda, loaded with safe_mode=False,
    does create the marker."""
    path = hostile.python_lambda(tmp_path)
    keras.saving.load_model(path, compile=False, safe_mode=False)
    assert hostile.marker(tmp_path).exists()
