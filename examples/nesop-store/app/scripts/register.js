// Registration page: send the form and report the server's answer.
"use strict";

document.getElementById("register").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const customer = await apiCall("POST", "/api/register", {
      name: form.get("name"),
      email: form.get("email"),
    });
    event.target.reset();
    showMessage(`Welcome, ${customer.name}! You are registered as ${customer.email}.`, "success");
  } catch (error) {
    showMessage(error.message, "error");
  }
});
