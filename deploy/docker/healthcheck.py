"""Container health check: `python healthcheck.py [path]` exits 0 when the service in this container
answers 200 on `path` (default `/readyz`). The port is the one the service listens on: `HTTP_PORT`, or
`MITTO_SIM_PORT` for the simulator. Standard library only, so it costs no import time of the app.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/readyz"
    port = os.environ.get("HTTP_PORT") or os.environ.get("MITTO_SIM_PORT") or "8000"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2.5) as answer:
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
