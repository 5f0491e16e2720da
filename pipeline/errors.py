"""The one type of error a user can fix: bad input, not a bug.

Every error that a user causes (a bad spec, a missing dataset package, a host that cannot be
resolved, a corrupt module, a refused sbatch, a wrong command line, ...) derives from
:class:`UserError`.  The command line catches that one type and prints the message's first
line, ``error: <message>``, and exits with code 2 -- no traceback (seml's ``InputError`` is the
model).  Anything else that escapes is a bug and shows its traceback.

A ``UserError`` raised inside a job (a run whose module is missing, say) is recorded in the
sweep's ``errors/`` folder like any other failure; the class only decides how the CLI reports it.

The error types that are specific to one stage are defined here too, so that the list of
what a user can get wrong is in one place; their modules import them from here.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the CLI prints ``error: <first line of str(e)>`` and exits 2."""

    exit_code = 2


class UsageError(UserError):
    """A wrong command line, or a command that cannot apply to what it was given."""


class SpecError(UserError, ValueError):
    """A bad spec; str() is the one-line message: ``<file>: <field>: <what is wrong>``."""


class DataError(UserError, ValueError):
    """A dataset that cannot be loaded or does not fit its spec."""


class ModuleError(UserError, RuntimeError):
    """A stage-1 module that is missing, corrupt or does not fit the receiving host."""


class ShardError(UserError, ValueError):
    """A result shard that cannot be read or names another run."""


class SlurmError(UserError, RuntimeError):
    """Slurm is missing or refused a submission."""


class PoolingError(UserError, ValueError):
    """A pooling a host cannot do (e.g. ``pooler`` on a host without one)."""
