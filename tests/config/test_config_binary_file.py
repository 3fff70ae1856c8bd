"""Issue 27 item 6 (config part): a config file that is binary data, not UTF-8 text, stops every entry point that
reads a config with one line naming the file and saying it is not a text (YAML) file (`miva.config.fields.read_yaml`,
the one reader)."""

import pytest

from miva.cli import main
from miva.config import ConfigError, load_config, load_train_config

# Bytes no UTF-8 text has: 0xff never occurs in UTF-8, 0x80 never starts a character.
GARBAGE = b"\xff\xfe\x80\x01\x9c binary \x00\x8f"


def _expected(path) -> str:
    return f"{path}: not a text (YAML) file: byte 0xff at position 0 is not UTF-8"


@pytest.fixture
def garbage(tmp_path):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(GARBAGE)
    return path


def test_load_config_names_the_file(garbage):
    with pytest.raises(ConfigError) as info:
        load_config(garbage)
    assert str(info.value) == _expected(garbage)
    with pytest.raises(ConfigError) as info:
        load_train_config(str(garbage))
    assert str(info.value) == _expected(garbage)


def test_zero_filled_file_is_not_text(tmp_path):
    path = tmp_path / "zeros.yaml"
    path.write_bytes(b"a: 1\n" + bytes(16))  # valid UTF-8, but binary
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not a text (YAML) file: NUL byte at position 5"


@pytest.mark.parametrize("command", [["infer"], ["train"], ["convert", "--out", "{tmp}/converted"]])
def test_commands_give_one_line(command, garbage, capsys, monkeypatch):
    monkeypatch.delenv("MIVA_DEBUG", raising=False)
    argv = [command[0], "--config", str(garbage), *[a.format(tmp=garbage.parent) for a in command[1:]]]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"miva {command[0]}: error: {_expected(garbage)}",
                     "(run with --debug or MIVA_DEBUG=1 for the traceback)"]
