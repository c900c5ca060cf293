"""Join a Dask scheduler that is already running, by address or by scheduler file.

``distributed.Client`` trusts whatever answers at the address: a service that is not a Dask
scheduler makes it read text as a frame length ("Unable to allocate 2.82 EiB") or wait forever
for a handshake that never comes (an HTTP port such as the dashboard's: its ``timeout`` does
not cover the handshake). :func:`probe_scheduler` therefore looks at the first bytes with a
plain socket and a deadline before the client is created.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from distributed import Client

from dimplicit.distributed.errors import OptionError, SchedulerConnectionError
from dimplicit.distributed.tls import TLSConfig

__all__ = ["join", "probe_scheduler", "read_scheduler_file"]

# A Dask handshake announces its length in its first 8 bytes (little-endian uint64); the real
# one is about 60 bytes. Text protocols (HTTP, SSH banners) decode to ~10**18.
_MAX_GREETING = 1 << 20
# Asked of a server that does not greet at once: an HTTP server answers it. A Dask scheduler
# has sent its handshake before it reads this, and then drops the probe's connection.
_HTTP_QUESTION = b"HEAD / HTTP/1.0\r\n\r\n"
_TLS_HINT = "; does the scheduler expect TLS (a tls:// address and credentials, {0})?"
# Seconds to wait for the handshake before asking (a local scheduler sends it within ms).
_PATIENCE = 0.5


def read_scheduler_file(path: str | Path) -> str:
    """The scheduler address in a file written by ``dask scheduler --scheduler-file``.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str
        The address, e.g. ``tcp://10.0.0.5:8786``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not JSON with an ``address``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Dask scheduler file not found: {path} "
            "(start the scheduler first, e.g. cluster/local/start.sh)"
        ) from None
    try:
        return str(json.loads(text)["address"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"not a Dask scheduler file (no 'address' in it): {path}") from None


def _receive(sock: socket.socket, n: int, deadline: float) -> tuple[bytes, bool]:
    """Up to ``n`` bytes before ``deadline``; also whether the peer closed the connection."""
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(data))
        except TimeoutError:
            return data, False
        except OSError:  # reset by the peer
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _greeting_length(header: bytes) -> int | None:
    """The length a Dask handshake header announces, or None if it cannot be one."""
    if len(header) < 8:
        return None
    n = int.from_bytes(header[:8], "little")
    return n if 0 < n <= _MAX_GREETING else None


def probe_scheduler(address: str, where: str, timeout: float) -> None:
    """Check within ``timeout`` seconds that a ``tcp://`` address speaks the Dask protocol.

    A Dask server sends its handshake as soon as it accepts a connection. If none comes at
    once, the probe asks an HTTP question: an HTTP server (the dashboard's port, the usual
    mistake) answers it, a TLS scheduler drops the connection, and a Dask scheduler that was
    merely slow has sent its handshake before it reads the question. Addresses that are
    refused, unresolvable or malformed, and other schemes (``tls://``, whose handshake
    distributed bounds itself), are left to ``distributed.Client``, which retries refused ones
    until its timeout.

    Parameters
    ----------
    address : str
        Scheduler address, with or without ``tcp://``.
    where : str
        How to name the scheduler in errors (the address, and the scheduler file if any).
    timeout : float
        Seconds for the whole probe.

    Raises
    ------
    SchedulerConnectionError
        The address does not reach a Dask scheduler (one-line message naming ``where``).
    """
    from distributed.comm import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location)
    except ValueError:
        return  # distributed says what is wrong with the address
    if scheme != "tcp":
        return
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:  # no answer at all, e.g. a firewall dropping packets
        raise SchedulerConnectionError(
            "cannot reach Dask scheduler at {where} within {timeout:g} s",
            where=where,
            timeout=timeout,
        ) from None
    except (OSError, OverflowError):  # refused, unresolvable or a port out of range
        return
    with sock:
        header, closed = _receive(sock, 8, time.monotonic() + min(_PATIENCE, timeout / 4))
        if not header and not closed:
            try:
                sock.sendall(_HTTP_QUESTION)
            except OSError:
                closed = True
            else:
                header, closed = _receive(sock, 8, deadline)
        elif len(header) < 8 and not closed:  # a greeting cut at the first deadline
            more, closed = _receive(sock, 8 - len(header), deadline)
            header += more
        length = _greeting_length(header)
        if length is None:
            raise _not_dask(where, header, closed, timeout) from None
        rest, _ = _receive(sock, length, deadline)
        if len(rest) < length:
            raise _not_dask(where, header + rest, True, timeout) from None


def _not_dask(where: str, answer: bytes, closed: bool, timeout: float) -> SchedulerConnectionError:
    """The error for a service that did not greet like a Dask scheduler, by what it did."""
    template = "cannot connect to Dask scheduler at {where}: "
    if answer.startswith(b"HTTP/"):
        template += (
            "it is an HTTP server (the dashboard?), not a Dask scheduler; "
            "the scheduler has a port of its own, 8786 by default"
        )
        return SchedulerConnectionError(template, where=where)
    if closed and not answer:
        # What a TLS scheduler does with a plain connection (a plain one greets at once).
        template += "it closed the connection without the Dask handshake" + _TLS_HINT
        return SchedulerConnectionError(template, "tls", where=where)
    if answer:
        template += "it answered {answer!r}, which is not the Dask protocol"
    else:
        template += "no Dask handshake within {timeout:g} s"
    template += "; is it a Dask scheduler?"
    return SchedulerConnectionError(template, where=where, answer=answer[:16], timeout=timeout)


def _connection_error(where: str, timeout: float, exc: OSError) -> SchedulerConnectionError:
    """Turn distributed's connection failure into a one-line, actionable error."""
    text = str(exc)
    # Refused or unroutable addresses are retried until the timeout: the common case.
    if isinstance(exc, TimeoutError) or text.startswith("Timed out"):
        return SchedulerConnectionError(
            "cannot reach Dask scheduler at {where} within {timeout:g} s",
            where=where,
            timeout=timeout,
        )
    # Otherwise the scheduler answered and the connection was rejected straight away.
    # Drop distributed's "in <TLS (closed) local=... remote=...>: " prefix.
    reason = text.rsplit(">: ", 1)[-1].splitlines()[0] if text else type(exc).__name__
    template = "cannot connect to Dask scheduler at {where}: {reason}"
    if where.startswith("tls://"):
        # A rejected client certificate shows up as an alert *or* as a bare EOF/reset,
        # depending on timing (TLS 1.3 checks it after the client's side of the handshake).
        template += (
            "; check {0}: the scheduler, workers and client need certificates signed by the same CA"
        )
        return SchedulerConnectionError(template, "tls", where=where, reason=reason)
    if where.startswith("tcp://"):
        template += _TLS_HINT
        return SchedulerConnectionError(template, "tls", where=where, reason=reason)
    return SchedulerConnectionError(template, where=where, reason=reason)


def join(
    scheduler: str | None,
    scheduler_file: str | Path | None,
    tls: TLSConfig | None,
    timeout: float,
) -> Client:
    """Client for a running scheduler; connection failures become one-line errors.

    Parameters
    ----------
    scheduler : str or None
        Scheduler address; used when ``scheduler_file`` is None.
    scheduler_file : str, Path or None
        File written by ``dask scheduler --scheduler-file``.
    tls : TLSConfig or None
        Client credentials; required for, and only for, ``tls://`` addresses.
    timeout : float
        Seconds to wait for the scheduler.

    Returns
    -------
    distributed.Client
        Set as the default client.

    Raises
    ------
    OptionError
        The scheme of the address and ``tls`` do not match.
    SchedulerConnectionError
        Nothing answered, the scheduler refused us, or it is not a Dask scheduler.
    """
    if scheduler_file is not None:
        path = Path(scheduler_file)
        address = read_scheduler_file(path)
        where = f"{address} (from scheduler file {path})"
    else:
        address = str(scheduler)
        where = address
    # A scheme mismatch would only show up as a timeout; say what is wrong right away.
    if address.startswith("tls://") and tls is None:
        raise OptionError("scheduler {where} uses TLS: give {0}", "tls", where=where)
    if tls is not None and not address.startswith("tls://"):
        raise OptionError(
            "TLS certificates given ({0}) but scheduler {where} is not a tls:// address",
            "tls",
            where=where,
        )
    security = tls.security() if tls is not None else None
    probe_scheduler(address, where, timeout)
    try:
        return Client(address, security=security, timeout=timeout, set_as_default=True)
    except OSError as exc:  # timeouts, refused connections, TLS handshake failures
        # One line and no chained traceback: the CLI prints str(exc) as its error message.
        raise _connection_error(where, timeout, exc) from None
    except MemoryError:  # a frame length read from something that is not Dask
        raise SchedulerConnectionError(
            "cannot connect to Dask scheduler at {where}: its answer is not the Dask "
            "protocol; is it a Dask scheduler?",
            where=where,
        ) from None
