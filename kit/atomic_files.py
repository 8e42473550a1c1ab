"""Writing files so that a crash never leaves a half-written one: write beside, then rename."""
import csv
import errno
import hashlib
import io
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

from kit.errors import WriteError


# ".<stem>.tmp<pid><suffix>": the temporary name atomic_path writes under.
TEMPORARY_NAME = re.compile(r"^\..+\.tmp\d+(\.[A-Za-z0-9]+)?$")


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix); rename it onto `path` on success."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except OSError as err:  # disk full, read-only, ...: one line naming the file
        raise WriteError(write_error_message(err, path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_leftover_temporaries(folder, subfolders=("checkpoint",)):
    """Delete temporary files that a killed process (kill -9, power loss) left in a run folder
    and its `subfolders` (where the kit writes; nothing deeper is searched).

    Only safe while holding the folder's lock: then no other process is writing them.
    """
    for directory in [Path(folder)] + [Path(folder) / name for name in subfolders]:
        for path in directory.glob(".*"):
            if path.is_file() and TEMPORARY_NAME.match(path.name):
                path.unlink(missing_ok=True)


def write_error_message(err, path):
    """One line for an OSError raised while writing `path`; says 'disk full' when that is why."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {path}"
    return f"cannot write {path}: {err.strerror or err}"


def file_sha256(path):
    """The hex SHA-256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path, rows):
    """rows: list of dicts with the same keys; columns in the order of the first row."""
    if rows:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, buffer.getvalue())


def read_csv(path):
    """Rows of a file written by write_csv, numbers as floats and 'epoch' as int; ValueError (naming
    the line) for a file that is not one: a row of another length, a cell that is no number."""
    rows = []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            if None in row or None in row.values():
                raise ValueError(f"line {line} has {'more' if None in row else 'fewer'} cells than the header")
            row = {k: float(v) if v else None for k, v in row.items()}
            if row.get("epoch") is None or not float(row["epoch"]).is_integer():
                raise ValueError(f"line {line} has no whole epoch number")
            rows.append({**row, "epoch": int(row["epoch"])})
    return rows
