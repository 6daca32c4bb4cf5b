"""A client that writes through the store's HTTP API every few milliseconds until told to stop.

Run on the host inside the container's network namespace (`nsenter --net`), it records every
write the app acknowledged (HTTP 201: committed) in a file, so a test can check afterwards that
each one is in the database, whatever happened to the app in between.

    python3 loadwriter.py URL ACK_FILE STOP_FILE [INTERVAL_SECONDS]
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

MAX_SECONDS = 600  # a bound: the writer stops by itself even if nobody tells it to


def main(argv: list[str]) -> int:
    url, ack_path, stop_path = argv[0], Path(argv[1]), Path(argv[2])
    interval = float(argv[3]) if len(argv) > 3 else 0.005
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + MAX_SECONDS
    sent = failed = 0
    with ack_path.open("a", encoding="utf-8") as acks:
        while not stop_path.exists() and time.monotonic() < deadline:
            email = f"load-{uuid.uuid4().hex[:16]}@example.com"
            body = json.dumps({"name": "Load Writer", "email": email}).encode()
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
            sent += 1
            try:
                with opener.open(request, timeout=2) as response:
                    if response.status == 201:
                        acks.write(email + "\n")
                        acks.flush()
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                failed += 1
            time.sleep(interval)
    print(json.dumps({"sent": sent, "failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
