"""A text corpus in any common encoding is read as the same characters, by one stated rule, or refused in one line."""

import logging

import numpy as np
import pytest

from peerkd.errors import ConfigError
from peerkd.world.text import decode_text, read_text_file

CORPUS = "".join(f"a\tcafé crème n°{i} déjà vu\nb\tthe quick brown fox {i}\n" for i in range(40))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32", "latin-1"])
def test_every_encoding_gives_the_windows_of_the_utf8_file(tmp_path, encoding):
    # Prepare: the same corpus as UTF-8, and in another encoding ("utf-16"/"utf-32" write a byte-order
    # mark; "utf-16-be" needs one added by hand).
    (tmp_path / "ref.txt").write_bytes(CORPUS.encode("utf-8"))
    raw = CORPUS.encode(encoding)
    (tmp_path / "other.txt").write_bytes(b"\xfe\xff" + raw if encoding == "utf-16-be" else raw)
    # Execute
    ref, other = read_text_file(tmp_path / "ref.txt"), read_text_file(tmp_path / "other.txt")
    # Assert: same windows, sources and alphabet (é and ° included).
    np.testing.assert_array_equal(ref[0], other[0])
    np.testing.assert_array_equal(ref[1], other[1])
    assert ref[2:] == other[2:] and "é" in ref[2]


def test_decode_text_rule_by_hand(caplog):
    assert decode_text("é".encode(), "f") == "é"
    assert decode_text(b"\xef\xbb\xbfab", "f") == "ab"  # the UTF-8 mark is not a character
    assert decode_text(b"\xff\xfea\x00b\x00", "f") == "ab"  # UTF-16 LE, marked
    # Not UTF-8 and unmarked: Latin-1, one character per byte, with a warning naming the file.
    with caplog.at_level(logging.WARNING, logger="peerkd"):
        assert decode_text(b"caf\xe9", "f.txt") == "café"
    assert "'f.txt' is not UTF-8" in caplog.text and "Latin-1" in caplog.text


@pytest.mark.parametrize(
    "raw, match",
    [
        ("hello".encode("utf-16-le"), r"holds a NUL byte \(offset 1\) and no byte-order mark"),  # unmarked UTF-16
        (b"\xff\xfe" + b"\x00\xd8", "has a utf-16 byte-order mark, but byte"),  # a lone surrogate
    ],
)
def test_undecodable_text_is_one_line(raw, match):
    with pytest.raises(ConfigError, match=f"data.path: 'f.txt' {match}"):
        decode_text(raw, "f.txt")
