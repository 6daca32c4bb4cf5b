// Product list: show the catalogue and put products in the cart.
"use strict";

function productCard(product) {
  const card = document.createElement("li");
  card.className = "product";
  const image = document.createElement("img");
  image.src = `/${product.image}`;
  image.alt = "";
  const name = document.createElement("h2");
  // textContent, never innerHTML: names come from the admin form.
  name.textContent = product.name;
  const description = document.createElement("p");
  description.className = "description";
  description.textContent = product.description;
  const price = document.createElement("p");
  price.className = "price";
  price.textContent = formatMoney(product.price_cents);
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Add to cart";
  button.addEventListener("click", async () => {
    try {
      const cart = await apiCall("POST", "/api/cart", { product_id: product.id, quantity: 1 });
      updateCartCount(cart.item_count);
      showMessage(`${product.name} is in your cart.`);
    } catch (error) {
      showMessage(error.message, "error");
    }
  });
  card.append(image, name, description, price, button);
  return card;
}

async function showProducts() {
  await headerReady;
  const data = await apiCall("GET", "/api/products");
  document.getElementById("products").replaceChildren(...data.products.map(productCard));
}

showProducts().catch((error) => showMessage(error.message, "error"));
