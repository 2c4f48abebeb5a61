"""The ``rtt`` commands now live in the package `landscape.cli` (one module per group); the names
imported from here before are kept."""

from landscape.cli.common import data_for as _data_for  # noqa: F401
from landscape.cli.common import write_nc as _write_nc  # noqa: F401
from landscape.configs import BN_POLICIES  # noqa: F401
from landscape.configs import path_alphas as _path_alphas  # noqa: F401
