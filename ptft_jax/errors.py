"""Errors a user can fix. `launch.py` prints their message as one sentence and exits with status 2."""


class UserError(Exception):
    """Bad input from the user: config, data, checkpoint or command line."""


class ConfigError(UserError, ValueError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass
