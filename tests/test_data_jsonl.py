"""The one JSONL writer of the project's outputs: whole lines, on disk after every write (a killed run keeps them),
and an atomic rewrite."""

from __future__ import annotations

import pytest

from s2l_trl.jsonl import JsonlWriter, drop_torn_tail, read_jsonl, write_jsonl_atomic


def test_each_write_is_on_disk_before_the_writer_closes(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as out:
        out.write({"question": "1 + 1?", "outputs": ["2"]})
        # Another reader (a resumed run, after a kill) sees the record now, not at close.
        assert read_jsonl(path) == [{"question": "1 + 1?", "outputs": ["2"]}]
        out.write({"a": "ü"}, {"b": 2})
        assert read_jsonl(path)[1:] == [{"a": "ü"}, {"b": 2}]
        assert "ü" in path.read_text(encoding="utf-8")  # not escaped
    with JsonlWriter(path) as out:  # appends
        out.write({"c": 3})
    assert len(read_jsonl(path)) == 4


def test_a_torn_tail_is_dropped_before_appending_again(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as out:
        out.write({"n": 1})
    with path.open("a") as f:
        f.write('{"n": 2, "outp')  # killed mid-line
    assert drop_torn_tail(path)
    with JsonlWriter(path) as out:
        out.write({"n": 3})
    assert read_jsonl(path) == [{"n": 1}, {"n": 3}]


def test_atomic_rewrite_leaves_the_old_file_when_the_records_fail(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl_atomic(path, [{"n": 1}])

    def records():
        yield {"n": 2}
        raise RuntimeError("judge crashed")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, records())
    assert read_jsonl(path) == [{"n": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left behind
    with pytest.raises(ValueError, match="mode must be 'a' or 'w', got 'r'"):
        JsonlWriter(path, mode="r")


def test_a_file_that_is_not_utf8_is_named_by_line(tmp_path):
    from s2l_trl.jsonl import iter_jsonl

    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"q": "1 + 1?"}\n\n' + '{"q": "Qu\'est-ce que 2 + 2 ?", "a": "quatre é"}\n'.encode("cp1252"))
    with pytest.raises(ValueError) as info:
        list(iter_jsonl(path))
    assert str(info.value).startswith(f"{path}:3: the file is not UTF-8: byte 0xe9 at byte ")
    assert "re-save the file as UTF-8" in str(info.value)

    class BenchmarkError(Exception):
        pass

    with pytest.raises(BenchmarkError, match=r"data\.jsonl:3: the file is not UTF-8"):
        read_jsonl(path, BenchmarkError)
    # A byte-order mark (some editors write one) is not an error; the lines before a bad one are yielded.
    path.write_bytes(b'\xef\xbb\xbf{"q": 1}\n{"q": 2}\r\n')
    assert read_jsonl(path) == [{"q": 1}, {"q": 2}]
    path.write_bytes(b'{"q": 1}\n{"q": "\xff"}\n')
    rows = iter_jsonl(path)
    assert next(rows) == (1, {"q": 1})
    with pytest.raises(ValueError, match=r"data\.jsonl:2: the file is not UTF-8: byte 0xff"):
        next(rows)
