// Helpers shared by every page: JSON calls, money, messages and the header.
"use strict";

let storeCurrency = "EUR";

async function apiCall(method, path, body, headers = {}) {
  const options = { method, headers: { ...headers } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) {
    throw new Error(data && data.error ? data.error : response.statusText);
  }
  return data;
}

function formatMoney(cents) {
  return new Intl.NumberFormat(undefined, { style: "currency", currency: storeCurrency })
    .format(cents / 100);
}

function showMessage(text, kind = "info") {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = `message ${kind}`;
  message.hidden = false;
}

function updateCartCount(count) {
  document.getElementById("cart-count").textContent = String(count);
}

async function loadHeader() {
  const info = await apiCall("GET", "/api/info");
  storeCurrency = info.currency;
  document.querySelectorAll("[data-store-name]").forEach((el) => { el.textContent = info.store_name; });
  document.querySelectorAll("[data-version]").forEach((el) => { el.textContent = info.version; });
  const cart = await apiCall("GET", "/api/cart");
  updateCartCount(cart.item_count);
}

// Pages wait for this before rendering prices, which need the currency.
const headerReady = loadHeader().catch((error) => showMessage(error.message, "error"));
