// cxr-node /ui: asks before a form that changes something is sent, and switches the heat map
// shown on a job's thumbnail. No inline scripts; htmx does the overview's polling.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
document.addEventListener("change", (event) => {
  const input = event.target;
  if (input.name !== "overlay") {
    return;
  }
  for (const item of document.querySelectorAll(".overlay, .region")) {
    item.classList.toggle("hidden", item.getAttribute("data-label") !== input.value);
  }
});
