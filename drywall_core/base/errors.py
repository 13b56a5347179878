"""Error types that map to the CLI's exit codes (see ARCHITECTURE.md)."""


class DrywallError(Exception):
    """Base class; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class InputError(DrywallError):
    """Bad usage or unreadable input (missing folder, corrupt JSON): exit 2."""

    exit_code = 2


class CheckFailed(DrywallError):
    """The input was read but failed a check (validation, gate): exit 1."""

    exit_code = 1


class OutputError(InputError):
    """An output location that cannot be used (a file where a folder goes, not writable): exit 2."""


class Interrupted(DrywallError):
    """SIGINT or SIGTERM: exit 130, one line, nothing half-written left behind."""

    exit_code = 130
