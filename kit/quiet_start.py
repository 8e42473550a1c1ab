"""TensorFlow's start without its C++ start-up log. TF_CPP_MIN_LOG_LEVEL (0 all, 1 no INFO, 2 no
WARNING, 3 no ERROR) defaults to 3 here; TensorFlow's libraries log a few lines before they read
it (two of them, each its own copy of absl: "Could not find cuda drivers" twice), so the import's
stderr is read back and the lines below the level are dropped. TF_CPP_MIN_LOG_LEVEL=0 shows all."""
import os
import re
import sys
import tempfile

DEFAULT_LEVEL = "3"
# absl's log lines: severity, MMDD, time (before absl::InitializeLog() 00:00:<Unix seconds>), thread,
# file:line]; and its banner before absl::InitializeLog().
LOG_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def import_tensorflow():
    """Import TensorFlow once, its start-up log held to TF_CPP_MIN_LOG_LEVEL (default 3, unless the
    user set it); what else the import writes to stderr is passed on."""
    if "tensorflow" in sys.modules:
        return
    level = log_level(os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL))
    if level == 0:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)  # the libraries write to file descriptor 2, not sys.stderr
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(without_start_up_log(captured.read().decode(errors="replace"), level))
            sys.stderr.flush()


def log_level(value):
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it: an integer, 0 when it is none."""
    try:
        return int(value)
    except ValueError:
        return 0


def without_start_up_log(text, level):
    """`text` less absl's log lines of a severity below `level` and, from level 1, its banner."""
    kept = []
    for line in text.splitlines(keepends=True):
        found = LOG_LINE.match(line)
        if (found and SEVERITY[found.group(1)] < level) or (level >= 1 and line.strip() == BANNER):
            continue
        kept.append(line)
    return "".join(kept)
