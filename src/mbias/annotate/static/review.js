// Keyboard shortcuts and the "edit this one" button of the review page. Loaded from /static
// because the Content-Security-Policy runs no inline script.
"use strict";

function isTyping(target) {
  return target instanceof HTMLElement && target.closest("textarea, input, select") !== null;
}

function submitOnce(form) {
  if (form && !form.dataset.sent) {
    form.dataset.sent = "1";
    form.requestSubmit();
  }
}

document.addEventListener("keydown", (event) => {
  if (isTyping(event.target)) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      submitOnce(event.target.form);
    } else if (event.key === "Escape") {
      event.target.blur();
    }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (/^[1-9]$/.test(event.key)) {
    const button = document.querySelector(`[data-accept="${event.key}"]`);
    if (button) {
      event.preventDefault();
      submitOnce(button.form);
    }
  } else if (event.key === "e") {
    const text = document.getElementById("edit-text");
    if (text) {
      event.preventDefault();
      text.focus();
      text.setSelectionRange(text.value.length, text.value.length);
    }
  } else if (event.key === "r") {
    const form = document.getElementById("reject-form");
    if (form) {
      event.preventDefault();
      submitOnce(form);
    }
  } else if (event.key === "s") {
    const skip = document.getElementById("skip");
    if (skip) {
      event.preventDefault();
      skip.click();
    }
  }
});

document.addEventListener("click", (event) => {
  const button = event.target instanceof Element ? event.target.closest("[data-edit-from]") : null;
  if (!button) return;
  const text = document.getElementById("edit-text");
  text.value = button.dataset.text;
  document.getElementById("edit-base").value = button.dataset.editFrom;
  text.focus();
});
