"""Receipt links: ``/receipt/<token>``, where the token is the order's id
signed with config.SECRET_KEY.

The customer who places an order gets its link; nobody can make the link of
another order from its id, which only counts up. Without a key there are no
receipt links.

A token is ``<id>.<signature>``, signed as itsdangerous 2 signs by default
(an HMAC-SHA1 under a key derived from the salt and the secret key), which
made the links of 1.1.2: they still open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SALT = b"nesop-store.receipt"


def _signature(secret_key: str, value: str) -> str:
    key = hashlib.sha1(SALT + b"signer" + secret_key.encode()).digest()
    digest = hmac.new(key, value.encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token(secret_key: str, order_id: int) -> str:
    value = str(order_id)
    return f"{value}.{_signature(secret_key, value)}"


def order_id(secret_key: str, token: str) -> int | None:
    """The id of the order whose link ``token`` is; None if it is none (or there is no key)."""
    value, _, signature = token.rpartition(".")
    if not secret_key or not (value.isascii() and value.isdigit()):
        return None
    if not hmac.compare_digest(signature.encode(), _signature(secret_key, value).encode()):
        return None
    return int(value)
