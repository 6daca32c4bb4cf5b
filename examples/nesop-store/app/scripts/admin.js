// Admin page: manage products with the admin token (kept for this tab only).
"use strict";

function adminHeaders() {
  return { Authorization: `Bearer ${sessionStorage.getItem("adminToken") || ""}` };
}

function productRow(product) {
  const row = document.createElement("tr");
  for (const text of [product.sku, product.name]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  }
  const price = document.createElement("input");
  price.type = "number";
  price.min = "0";
  price.value = String(product.price_cents);
  price.addEventListener("change", () => adminAction("PUT", product.id,
    { price_cents: Number(price.value) }, `Price of ${product.name} updated.`));
  const priceCell = document.createElement("td");
  priceCell.append(price);
  const retire = document.createElement("button");
  retire.type = "button";
  retire.textContent = "Retire";
  retire.addEventListener("click", () => adminAction("DELETE", product.id, undefined,
    `${product.name} is no longer sold.`));
  const action = document.createElement("td");
  action.append(retire);
  row.append(priceCell, action);
  return row;
}

async function adminAction(method, productId, body, done) {
  try {
    await apiCall(method, `/api/admin/products/${productId}`, body, adminHeaders());
    showMessage(done, "success");
    await refresh();
  } catch (error) {
    showMessage(error.message, "error");
  }
}

async function refresh() {
  const stats = await apiCall("GET", "/api/admin/stats", undefined, adminHeaders());
  document.getElementById("stats").textContent =
    `${stats.products} products, ${stats.customers} customers, ${stats.orders} orders.`;
  const data = await apiCall("GET", "/api/products");
  document.getElementById("admin-products").replaceChildren(...data.products.map(productRow));
}

document.getElementById("token").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("adminToken", new FormData(event.target).get("token"));
  refresh().catch((error) => showMessage(error.message, "error"));
});

document.getElementById("new-product").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const product = {
    sku: form.get("sku"),
    name: form.get("name"),
    description: form.get("description"),
    price_cents: Number(form.get("price_cents")),
  };
  try {
    await apiCall("POST", "/api/admin/products", product, adminHeaders());
    event.target.reset();
    showMessage(`${product.name} added.`, "success");
    await refresh();
  } catch (error) {
    showMessage(error.message, "error");
  }
});

if (sessionStorage.getItem("adminToken")) {
  refresh().catch((error) => showMessage(error.message, "error"));
}
