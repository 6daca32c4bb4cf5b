"""Pages the store renders on the server: the printable price list.

Product names, descriptions and categories are typed in by admins, so no
value goes into the HTML unescaped: MarkupSafe's ``Markup.format`` escapes
every argument that is not markup already.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from markupsafe import Markup

PAGE = Markup("""\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} - {store_name}</title>
  <link rel="icon" href="/assets/favicon.png" type="image/png">
  <link rel="stylesheet" href="/styles/store.css">
</head>
<body>
  <header class="site-header">
    <a class="brand" href="/"><img src="/assets/logo.svg" alt="" width="32" height="32"> {store_name}</a>
    <nav>
      <a href="/">Products</a>
      <a href="/cart">Cart</a>
      <a href="/register">Register</a>
      <a href="/admin">Admin</a>
    </nav>
  </header>
  <main>
    <h1>{title}</h1>
{content}  </main>
  <footer>{store_name} {version}</footer>
</body>
</html>
""")

CATEGORY = Markup("""\
    <h2 class="category">{category}</h2>
    <table class="price-list">
      <thead>
        <tr><th>Product</th><th>Description</th><th class="amount">Price</th></tr>
      </thead>
      <tbody>
{rows}      </tbody>
    </table>
""")

PRODUCT = Markup("""\
        <tr><td>{name}{sold_out}</td><td>{description}</td><td class="amount">{price}</td></tr>
""")

SOLD_OUT = Markup(' <span class="sold-out">sold out</span>')
EMPTY = Markup('    <p class="lead">Nothing is for sale right now.</p>\n')


def money(cents: int, currency: str) -> str:
    return f"{cents // 100}.{cents % 100:02d} {currency}"


def page(title: str, content: Markup, store_name: str, version: str) -> str:
    return str(PAGE.format(title=title, content=content, store_name=store_name, version=version))


def catalogue(products: Iterable[dict[str, Any]], store_name: str, version: str, currency: str) -> str:
    """The price list: one table per category, in the order given (store.list_products sorts)."""
    sections = []
    for category, group in itertools.groupby(products, key=lambda product: product["category"]):
        rows = Markup("").join(
            PRODUCT.format(
                name=product["name"],
                sold_out=SOLD_OUT if product["stock"] <= 0 else "",
                description=product["description"],
                price=money(product["price_cents"], currency),
            )
            for product in group
        )
        sections.append(CATEGORY.format(category=category, rows=rows))
    return page("Price list", Markup("").join(sections) or EMPTY, store_name, version)
