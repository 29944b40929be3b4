"""Typed errors: each carries what the user needs to fix the problem."""


class AmocError(Exception):
    """Base of every error amoc reports to a user."""


class ConfigError(AmocError):
    """A configuration value is missing, unknown or invalid."""


class ScenarioError(AmocError):
    """A scenario cannot be loaded, lacks `start`, or its `init` failed."""


class RunnerError(AmocError):
    """A runner command does not fit the current state (ids, counts, state)."""


class NodeError(AmocError):
    """A node cannot start, stop or be reached."""
