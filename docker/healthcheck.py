"""Container HEALTHCHECK: exit 0 when GET /healthz answers 200, else 1.

Standard library only (the images carry no curl). It reads the same PSPNET_HOST
and PSPNET_PORT as the server, and probes loopback when the server binds every
address.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("PSPNET_PORT", "8000")
    host = os.environ.get("PSPNET_HOST", "0.0.0.0")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"  # a literal IPv6 address in a URL
    url = f"http://{host}:{port}/healthz"
    try:
        # the timeout stays under the HEALTHCHECK's own, so a hung server reads as unhealthy, not as a kill
        with urllib.request.urlopen(url, timeout=4) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1
    if not ok:
        print(f"healthcheck: {url}: HTTP {resp.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
