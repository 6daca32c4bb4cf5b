"""Settings of the NESOP Store.

Each deployment-specific value can be set by an environment variable (for
example in a systemd drop-in for nesop-store.service), which wins over the
default written here; that keeps local settings out of this file, which
updates replace.
"""

import os

HOST = os.environ.get("NESOP_STORE_HOST", "127.0.0.1")
PORT = int(os.environ.get("NESOP_STORE_PORT", "5000"))
DATABASE = os.environ.get("NESOP_STORE_DB", "/opt/nesop-store/data/nesop_store_production.db")
# Bearer token for the /api/admin/ endpoints. Empty (the default) turns the
# admin API off rather than leaving it open.
ADMIN_TOKEN = os.environ.get("NESOP_STORE_ADMIN_TOKEN", "")

STORE_NAME = "NESOP Store"
CURRENCY = "EUR"
# How long a request waits for another writer's lock before failing, in ms.
BUSY_TIMEOUT_MS = 5000
