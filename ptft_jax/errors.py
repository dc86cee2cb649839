"""Errors a user can fix. `launch.py` prints their message as one sentence and exits with status 2."""


class UserError(Exception):
    """Bad input from the user: config, data, checkpoint or command line."""


class ConfigError(UserError, ValueError):
    @classmethod
    def choice(cls, key: str, value, allowed) -> "ConfigError":
        """'optim.name is 'lion'; use one of: sgd, adam, adamw.' (allowed may hold None, shown as None)."""
        return cls(f"{key} is {value!r}; use one of: {', '.join(str(a) for a in allowed)}.")


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass


class Diverged(UserError):
    """The loss or a gradient became non-finite."""


class Interrupted(UserError):
    """SIGTERM or SIGINT: a checkpoint was saved; rerun to resume."""

    def __init__(self, message: str, signum: int = 15):
        super().__init__(message)
        self.signum = signum


def main_exit_code(run, *args) -> int:
    """For a module's command line (`python -m ptft_jax.convert`, ...): `run(*args)`, a UserError printed as one
    'error:' line and exit status 2, else 0."""
    import sys
    try:
        run(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
