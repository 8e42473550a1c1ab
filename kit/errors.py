"""The kit's exceptions and the one place that turns them into exit codes (docs/RELIABILITY.md, Exit codes).

0 done · 1 data problem · 2 bad options or refused request · 3 non-finite loss ·
4 damaged run folder · 5 cannot write outputs (disk full) · 130/143 interrupted (SIGINT/SIGTERM)
"""
import sys
from pathlib import Path


class KitError(Exception):
    """An error the user can act on: one line (and a hint), never a traceback."""
    exit_code = 1
    hint = ""

    def line(self):
        return f"error: {self}"


class DataError(KitError):
    """A data file is missing, unreadable or not what it claims to be: exit 1."""


class UsageError(KitError):
    """Something the user asked for cannot be done: exit 2."""
    exit_code = 2

    def line(self):  # the same form as argparse's own messages
        return f"{Path(sys.argv[0]).name}: error: {self}"


class LockedError(UsageError):
    """Another live run holds the output folder's lock: exit 2."""


class TrainingStopped(KitError):
    """Training ended early; `exit_code` says why (130 SIGINT, 143 SIGTERM, 3 non-finite loss or
    every update skipped)."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code

    def line(self):
        return f"\nstopped: {self}"


class DamagedRunError(KitError):
    """A run folder's saved state (state.json, config.json, checkpoint model) is damaged: exit 4."""
    exit_code = 4


class WriteError(KitError):
    """An output could not be written (disk full, read-only, ...): exit 5."""
    exit_code = 5


def exit_code_of(main, *args):
    """Run `main(*args)` and return its exit code, printing one line (no traceback) for a known error."""
    try:
        return main(*args)
    except KitError as err:
        print(err.line(), file=sys.stderr)
        if err.hint:
            print(err.hint, file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside training (loading, evaluating)
        print("\ninterrupted", file=sys.stderr)
        return 130
