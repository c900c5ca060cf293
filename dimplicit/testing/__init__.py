"""Helpers for dimplicit's tests: real clusters and credentials, made on the spot.

Nothing in the library imports this package. It needs the ``test`` extra for the certificates
(``pip install 'dimplicit[test]'``, which brings ``cryptography``).

* :func:`make_test_certificates` -- a throw-away CA with a server and a client certificate
  (the Python twin of ``cluster/tls/make_certs.sh``);
* :func:`start_local_processes` -- ``dask scheduler`` and ``dask worker`` processes on
  127.0.0.1 (the Python twin of ``cluster/local/start.sh``).
"""

from dimplicit.testing.certificates import CertificateSet, make_test_certificates
from dimplicit.testing.processes import ProcessCluster, start_local_processes

__all__ = ["CertificateSet", "ProcessCluster", "make_test_certificates", "start_local_processes"]
