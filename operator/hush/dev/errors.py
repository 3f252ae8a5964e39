"""The one exception type that ``hush dev`` turns into a clear message and exit code 1.

Every failure a developer can act on (a component that exited, a timeout, a missing binary)
is raised as :class:`DevClusterError` with a message that names the component, says what
happened and, where there is one, quotes the tail of its log. Anything else is a bug and is
left to propagate with its traceback.
"""

from __future__ import annotations


class DevClusterError(Exception):
    """A dev cluster could not be brought up, inspected or torn down."""
