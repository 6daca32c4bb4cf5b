// Cart page: list the cart, remove lines and place the order.
"use strict";

function cartRow(line) {
  const row = document.createElement("tr");
  const cells = [line.name, String(line.quantity), formatMoney(line.unit_price_cents),
    formatMoney(line.line_total_cents)].map((text) => {
    const cell = document.createElement("td");
    cell.textContent = text;
    return cell;
  });
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.addEventListener("click", async () => {
    try {
      renderCart(await apiCall("DELETE", `/api/cart/${line.product_id}`));
    } catch (error) {
      showMessage(error.message, "error");
    }
  });
  const action = document.createElement("td");
  action.append(remove);
  row.append(...cells, action);
  return row;
}

function renderCart(cart) {
  document.getElementById("cart-items").replaceChildren(...cart.items.map(cartRow));
  document.getElementById("cart-total").textContent = formatMoney(cart.total_cents);
  document.getElementById("checkout").hidden = cart.items.length === 0;
  updateCartCount(cart.item_count);
  if (cart.items.length === 0) {
    showMessage("Your cart is empty.");
  }
}

document.getElementById("checkout").addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = new FormData(event.target).get("email").trim();
  try {
    const order = await apiCall("POST", "/api/orders", email ? { email } : {});
    renderCart(await apiCall("GET", "/api/cart"));
    showMessage(`Thank you! Order ${order.order_id} is placed: ${formatMoney(order.total_cents)}.`, "success");
  } catch (error) {
    showMessage(error.message, "error");
  }
});

headerReady
  .then(() => apiCall("GET", "/api/cart"))
  .then(renderCart)
  .catch((error) => showMessage(error.message, "error"));
