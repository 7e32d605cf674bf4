"""Reading corpus text files line by line with exact line numbers and strict decoding.

The issue's bad-input rule: non-UTF-8 text gets an error naming the file and line (or, under the
skip policy, a counted skip), never a silent replacement character. Lines are decoded one by one
so that a single bad byte is reported where it is and does not hide the rest of the file.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from giamic.data.errors import DataError


@dataclass(frozen=True)
class TextLine:
    """One line of a text file: 1-based ``number``, decoded ``text`` without the line ending.

    ``error`` is set when the bytes are not valid in the requested encoding; ``text`` then holds a
    lossy decoding, usable only to tell which utterance the line belongs to.
    """

    number: int
    text: str
    error: DataError | None = None


def read_lines(path: str | os.PathLike, encoding: str = "utf-8") -> list[TextLine]:
    """All lines of ``path`` (``\\n`` or ``\\r\\n`` endings); a missing file is a :class:`DataError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path, kind="missing_file") from None
    except OSError as e:
        raise DataError(f"cannot read ({e})", path, kind="missing_file") from None
    out: list[TextLine] = []
    for i, chunk in enumerate(raw.split(b"\n"), start=1):
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
        try:
            out.append(TextLine(i, chunk.decode(encoding)))
        except UnicodeDecodeError as e:
            err = DataError(
                f"not valid {encoding} text (byte 0x{chunk[e.start]:02x} at column {e.start + 1}); "
                f"if the file is Latin-1, re-run with --text-encoding latin-1",
                path, i, kind="encoding",
            )
            out.append(TextLine(i, chunk.decode(encoding, errors="replace"), err))
    if out and out[-1].text == "" and out[-1].error is None:
        out.pop()  # the empty piece after a final newline is not a line
    return out


def read_id_text_file(path: str | os.PathLike, encoding: str = "utf-8") -> dict[str, str]:
    """Read a second text source: ``utt_id<TAB>text`` lines, or a CSV with ``utt_id`` and ``text`` columns.

    Used by ``giamic prepare --asr-transcripts FILE``. Errors name the file and line;
    duplicate ids are an error (two different texts for one utterance cannot both be right).
    """
    path = Path(path)
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    if path.suffix.lower() == ".csv":
        lines = read_lines(path, encoding)
        for ln in lines:
            if ln.error:
                raise ln.error
        reader = csv.DictReader(io.StringIO("\n".join(ln.text for ln in lines) + "\n", newline=""))
        cols = reader.fieldnames or []
        text_col = next((c for c in ("text", "transcript_asr", "transcript") if c in cols), None)
        if "utt_id" not in cols or text_col is None:
            raise DataError(f"CSV needs columns 'utt_id' and 'text', has {cols}", path, 1, kind="malformed_line")
        for row in reader:
            uid = (row.get("utt_id") or "").strip()
            if not uid:
                raise DataError("empty utt_id", path, reader.line_num, kind="malformed_line")
            if uid in out:
                raise DataError(f"duplicate utt_id {uid!r} (first on line {first_line[uid]})", path, reader.line_num, kind="malformed_line")
            out[uid] = (row.get(text_col) or "").strip()
            first_line[uid] = reader.line_num
        return out
    for ln in read_lines(path, encoding):
        if ln.error:
            raise ln.error
        if not ln.text.strip():
            continue
        if "\t" not in ln.text:
            raise DataError("expected 'utt_id<TAB>text'", path, ln.number, kind="malformed_line")
        uid, text = ln.text.split("\t", 1)
        uid = uid.strip()
        if uid in out:
            raise DataError(f"duplicate utt_id {uid!r} (first on line {first_line[uid]})", path, ln.number, kind="malformed_line")
        out[uid] = text.strip()
        first_line[uid] = ln.number
    return out
