"""The former single module of this package, kept so that existing imports keep working.

``from dimplicit.distributed.cluster import connect, describe`` appears in scripts written
against earlier versions. New code imports from the module of each concern:

* :mod:`.connect` -- :func:`connect` and the checks of its options;
* :mod:`.join` / :mod:`.local` -- joining a running scheduler / starting one on this machine;
* :mod:`.tls` -- :class:`TLSConfig`;
* :mod:`.blas` -- BLAS threads of the workers;
* :mod:`.summary` -- :func:`describe` and the one-line summary.

The command-line flags are in :mod:`dimplicit.commands._cluster`; throw-away certificates and
subprocess clusters for tests in :mod:`dimplicit.testing`.
"""

from dimplicit.distributed.blas import BLAS_ENV_VARS, set_worker_blas_threads
from dimplicit.distributed.connect import connect
from dimplicit.distributed.summary import dashboard_link, describe, format_description
from dimplicit.distributed.tls import TLSConfig

__all__ = [
    "BLAS_ENV_VARS",
    "TLSConfig",
    "connect",
    "dashboard_link",
    "describe",
    "format_description",
    "set_worker_blas_threads",
]
