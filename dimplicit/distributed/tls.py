"""Mutual-TLS credentials for Dask clients, schedulers and workers.

``distributed`` is imported inside the methods: the command line builds :class:`TLSConfig`
from its flags without paying for importing it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from distributed.security import Security

__all__ = ["TLSConfig"]


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    """Mutual-TLS credentials: a CA bundle plus this party's certificate and private key.

    Dask's TLS is mutual: the scheduler only accepts peers (workers, clients) whose certificate
    is signed by its CA, and peers only trust a scheduler signed by theirs.

    Parameters
    ----------
    ca_file : str or Path
        PEM file with the CA certificate(s) used to verify the other side.
    cert_file : str or Path
        PEM certificate of this party (client, worker or scheduler).
    key_file : str or Path
        PEM private key of ``cert_file``.
    """

    ca_file: str | Path
    cert_file: str | Path
    key_file: str | Path

    def check_files(self) -> None:
        """Raise :class:`FileNotFoundError` naming the first credential file that is missing."""
        for what, path in (
            ("CA file", self.ca_file),
            ("certificate", self.cert_file),
            ("key", self.key_file),
        ):
            if not Path(path).is_file():
                raise FileNotFoundError(f"TLS {what} not found: {path}")

    def security(self) -> Security:
        """Client-side :class:`distributed.security.Security` (encryption required)."""
        from distributed.security import Security

        self.check_files()
        return Security(
            require_encryption=True,
            tls_ca_file=str(self.ca_file),
            tls_client_cert=str(self.cert_file),
            tls_client_key=str(self.key_file),
        )

    def cluster_security(self) -> Security:
        """Security for a cluster started here: the same certificate for every role."""
        from distributed.security import Security

        self.check_files()
        cert, key = str(self.cert_file), str(self.key_file)
        return Security(
            require_encryption=True,
            tls_ca_file=str(self.ca_file),
            tls_client_cert=cert,
            tls_client_key=key,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
        )

    def cli_args(self) -> list[str]:
        """The ``--tls-*`` flags of ``dask scheduler`` / ``dask worker`` for these files."""
        return [
            "--tls-ca-file",
            str(self.ca_file),
            "--tls-cert",
            str(self.cert_file),
            "--tls-key",
            str(self.key_file),
        ]
