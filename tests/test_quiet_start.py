"""TensorFlow's start-up log held to TF_CPP_MIN_LOG_LEVEL. (A fresh run's stderr at the default:
tests/test_reliability.py.)"""
from kit.quiet_start import log_level, without_start_up_log

START_UP = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796290638.193370    5167 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
W0000 00:00:1796290638.528960    5167 some_file.cc:227] a warning
E0000 00:00:1796290651.486098    5167 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error
/x/y.py:3: DeprecationWarning: a Python warning
F1203 10:05:14.222428   14720 fatal.cc:1] a fatal error
"""


def test_each_level_drops_the_log_lines_below_it_and_keeps_the_rest():
    lines = START_UP.splitlines(keepends=True)
    assert without_start_up_log(START_UP, 0) == START_UP
    assert without_start_up_log(START_UP, 1) == "".join(lines[2:])
    assert without_start_up_log(START_UP, 2) == "".join(lines[3:])
    assert without_start_up_log(START_UP, 3) == "".join(lines[4:])  # a fatal error and Python's lines stay


def test_the_level_is_read_as_tensorflow_reads_it():
    assert [log_level(v) for v in ("3", "0", "", "x")] == [3, 0, 0, 0]
