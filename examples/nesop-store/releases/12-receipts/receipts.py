"""Receipt links: ``/receipt/<token>``, where the token is the order's id
signed with config.SECRET_KEY.

The customer who places an order gets its link; nobody can make the link of
another order from its id, which only counts up. Without a key there are no
receipt links.
"""

from __future__ import annotations

from itsdangerous import BadSignature, Signer

SALT = "nesop-store.receipt"


def token(secret_key: str, order_id: int) -> str:
    return Signer(secret_key, salt=SALT).sign(str(order_id)).decode()


def order_id(secret_key: str, token: str) -> int | None:
    """The id of the order whose link ``token`` is; None if it is none (or there is no key)."""
    if not secret_key:
        return None
    try:
        value = Signer(secret_key, salt=SALT).unsign(token).decode()
    except BadSignature:
        return None
    return int(value) if value.isascii() and value.isdigit() else None
