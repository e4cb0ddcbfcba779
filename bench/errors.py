"""Specific exceptions. Library code raises these; the CLI turns them into one-line messages."""


class LorabenchError(Exception):
    """Base class for every error lorabench reports to a user as a one-line message."""


class ConfigError(LorabenchError, ValueError):
    """A method config, suite file or command-line value is missing, unknown or ill-typed."""


class UnknownMethodError(ConfigError, KeyError):
    """A method name that no registered plugin provides."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TargetError(LorabenchError, ValueError):
    """`target_modules` matched nothing, or matched a layer type lorabench cannot adapt."""


class MergeError(LorabenchError, RuntimeError):
    """A method that is input-dependent (routed) was asked to merge into the base weight."""


class AdapterFileError(LorabenchError, ValueError):
    """An adapter file is missing, unreadable, or does not fit the model it is loaded into."""


class RunFileError(LorabenchError, ValueError):
    """A saved run (its record or adapter) is missing, or cannot be loaded as asked."""


class ModelSourceError(LorabenchError, RuntimeError):
    """A built-in model could not be fetched, verified, converted or built."""


class TaskSourceError(LorabenchError, RuntimeError):
    """A built-in task source (``commonsense``) could not be fetched, verified or converted."""


class OutputError(LorabenchError, OSError):
    """An output folder (``--out``) cannot be created or written."""


class SuiteCodeError(ConfigError):
    """A suite's task configs would make lm-eval import Python, and ``--trust-suite-code`` is off."""


class Interrupted(LorabenchError):
    """The user interrupted a suite (Ctrl-C); the message says what finished. Exit status 130."""
