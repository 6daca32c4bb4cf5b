"""Receipt links: ``/receipt/<token>``, where the token is the order's id and
the time the link expires, signed with config.SECRET_KEY.

The customer who places an order gets its link; nobody can make the link of
another order from its id, which only counts up, nor make a link last longer.
A link opens for 30 days, time enough to print or save the receipt. Without a
key there are no receipt links.
"""

from __future__ import annotations

from itsdangerous import BadData, TimedJSONWebSignatureSerializer

SALT = "nesop-store.receipt"
# How long a receipt link opens, in seconds.
EXPIRES_IN = 30 * 24 * 60 * 60


def _serializer(secret_key: str) -> TimedJSONWebSignatureSerializer:
    return TimedJSONWebSignatureSerializer(secret_key, expires_in=EXPIRES_IN, salt=SALT)


def token(secret_key: str, order_id: int) -> str:
    return _serializer(secret_key).dumps({"order_id": order_id}).decode()


def order_id(secret_key: str, token: str) -> int | None:
    """The id of the order whose link ``token`` is; None if it is none or has expired (or there is no key)."""
    if not secret_key:
        return None
    try:
        data = _serializer(secret_key).loads(token)
    except BadData:  # a wrong signature, an expired link, or no token at all
        return None
    return int(data["order_id"])
