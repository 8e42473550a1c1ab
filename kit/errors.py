"""The kit's exceptions and the one place that turns them into exit codes (README, Exit codes)."""
import sys
from pathlib import Path


class UsageError(Exception):
    """Something the user asked for cannot be done: exit 2, one line."""
    exit_code = 2


class DataError(Exception):
    """A data file is missing, unreadable or not what it claims to be: exit 1."""
    exit_code = 1


class TrainingStopped(Exception):
    """Training ended early; `exit_code` says why (130 SIGINT, 143 SIGTERM, 3 non-finite loss)."""

    def __init__(self, message, exit_code, hint=""):
        super().__init__(message)
        self.exit_code = exit_code
        self.hint = hint  # how to go on, added once the run's folder is known


def exit_code_of(main, *args):
    """Run `main(*args)` and return its exit code, printing one line (no traceback) for a known error."""
    try:
        return main(*args)
    except UsageError as err:  # the same form as argparse's own messages
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        return err.exit_code
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except TrainingStopped as stop:
        print(f"\nstopped: {stop}", file=sys.stderr)
        if stop.hint:
            print(stop.hint, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside training (loading, evaluating)
        print("\ninterrupted", file=sys.stderr)
        return 130
