"""Is an instance's port open? Through Docker's userland proxy, a connect alone proves little."""

from __future__ import annotations

import http.client
import socket


def port_open(host: str, port: int, timeout: float = 0.5, settle: float = 0.05) -> bool:
    """True when something in the container accepts connections on ``port``.

    Docker's proxy accepts on the host port even when nothing listens in the container, then
    closes at once; a real server keeps the connection open waiting for a request.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(settle)
            try:
                data = sock.recv(1)
            except TimeoutError:
                return True  # still open: a server is waiting for our request
            except OSError:
                return False  # reset by the proxy
            return bool(data)  # b"" is the proxy hanging up; bytes are a talkative server
    except OSError:
        return False


def http_ok(host: str, port: int, path: str, timeout: float = 1.0) -> tuple[bool, str]:
    """GET ``path``: (True, "") on a 2xx answer, else (False, what went wrong)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path or "/", headers={"User-Agent": "paas-health-check",
                                                  "Connection": "close"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        return False, f"GET {path} failed: {type(e).__name__}"
    finally:
        conn.close()
    if 200 <= status < 300:
        return True, ""
    return False, f"GET {path} answered {status}"
