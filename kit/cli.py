"""Entry point shared by the dataset scripts: check the arguments, then load TensorFlow and run."""
import os
import sys

from kit.config import parse_config


def main(spec, argv=None):
    """Exit codes: 0 done, 1 data problem, 2 bad arguments, 3 non-finite loss, 130/143 interrupted."""
    config = parse_config(spec, argv)  # exits 2 on bad input, before any data or TensorFlow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out
    try:
        from kit import run as train  # TensorFlow takes seconds to import: only once the arguments are good
        return train.run(config, spec)
    except KeyboardInterrupt:  # Ctrl-C outside training (loading, evaluating): no traceback
        print("\ninterrupted", file=sys.stderr)
        return 130
