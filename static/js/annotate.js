/* prefloop annotator page: keyboard shortcuts, time spent per item, submit → next-item timing.
 *
 * The item (#annotate-item) is a server-rendered partial. Submitting POSTs it with HTMX and the
 * response *is* the next item, swapped in place: no second request, no page reload. This file
 * only adds behaviour on top; without it the form still works as a plain POST.
 *
 * Shortcuts: 1 left · 2 right · 3 tie · 0 both bad · Q/W/E strength · R rationale · S skip ·
 * B back to the previous item (to change its judgment) · I instructions · Enter submit
 * (Ctrl+Enter while typing the rationale; Esc leaves the rationale, or cancels a change).
 * The keys work wherever focus is (a collapsed <summary>, a radio, the page), except while
 * typing in the rationale; Enter on a focused button or link keeps its own meaning.
 *
 * window.prefloop.latencies holds submit → next-item-visible times in ms, and
 * window.prefloop.serverMs the server's part of each (Server-Timing); the browser test and the
 * benchmark read them.
 */
(function () {
  "use strict";

  var state = {
    shownAt: performance.now(),   // when the current item became visible
    submitAt: null,               // when the pending submit/skip started
  };
  var api = (window.prefloop = window.prefloop || {});
  api.latencies = api.latencies || [];
  api.serverMs = api.serverMs || [];  // the server's own time for each (Server-Timing header)
  api.items = api.items || 0;

  function item() { return document.getElementById("annotate-item"); }
  function form() { var i = item(); return i ? i.querySelector("form.judge") : null; }

  function check(name, value) {
    var f = form();
    if (!f) return;
    var input = f.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (!input || input.disabled) return;
    input.checked = true;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function syncStrength() {
    var f = form();
    if (!f) return;
    var chosen = f.querySelector('input[name="choice"]:checked');
    var noStrength = chosen && (chosen.value === "tie" || chosen.value === "both_bad");
    f.classList.toggle("no-strength", !!noStrength);
    f.querySelectorAll('input[name="strength"]').forEach(function (r) {
      r.disabled = !!noStrength;
      if (noStrength) r.checked = false;
    });
    if (chosen) {
      var hint = f.querySelector(".decision-hint");
      if (hint) hint.hidden = true;
    }
  }

  function submit() {
    var f = form();
    if (f) f.requestSubmit(f.querySelector('[data-action="submit"]'));
  }

  function skip() {
    var f = form();
    var b = f && f.querySelector('[data-action="skip"]');
    if (b) { state.submitAt = performance.now(); b.click(); }
  }

  function clickAction(name) {
    var i = item();
    var b = i && i.querySelector('[data-action="' + name + '"]');
    if (b) b.click();
    return !!b;
  }

  function toggleInstructions() {
    var d = document.getElementById("instructions");
    if (d) d.open = !d.open;
  }

  function isTyping(el) {
    if (!el) return false;
    var tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable) return true;
    if (tag === "INPUT") return ["radio", "checkbox", "button", "submit", "hidden"].indexOf(el.type) === -1;
    return false;
  }

  document.addEventListener("keydown", function (e) {
    if (!item() || e.defaultPrevented || e.altKey || e.metaKey || e.isComposing) return;
    var t = e.target;
    if (isTyping(t)) {
      if (e.key === "Enter" && e.ctrlKey) { e.preventDefault(); submit(); }
      else if (e.key === "Escape") { t.blur(); }
      return;
    }
    if (e.ctrlKey) return;
    if (e.key === "Escape") {
      // Leave whatever holds focus (a summary, a button); while changing the previous
      // judgment, Esc cancels the change.
      if (!clickAction("cancel-revise") && document.activeElement && document.activeElement !== document.body) {
        document.activeElement.blur();
      }
      e.preventDefault();
      return;
    }
    if (e.key === "Enter") {
      // A focused button or link keeps its own Enter (e.g. Tab to "Skip", then Enter).
      // A <summary> does not: Enter submits; Space, a click or I toggles it.
      if (t && (t.tagName === "BUTTON" || t.tagName === "A")) return;
      if (!form()) return;
      e.preventDefault();
      if (!e.repeat) submit();
      return;
    }
    var handled = true;
    switch (e.key.toLowerCase()) {
      case "1": check("choice", "left"); break;
      case "2": check("choice", "right"); break;
      case "3": check("choice", "tie"); break;
      case "0": check("choice", "both_bad"); break;
      case "q": check("strength", "1"); break;
      case "w": check("strength", "2"); break;
      case "e": check("strength", "3"); break;
      case "s": if (!e.repeat) skip(); break;
      case "b": if (!e.repeat) clickAction("back"); break;
      case "i": toggleInstructions(); break;
      case "r": var ta = form() && form().querySelector('textarea[name="rationale"]'); if (ta) ta.focus(); else handled = false; break;
      default: handled = false;
    }
    if (handled) e.preventDefault();
  });

  document.addEventListener("change", function (e) {
    if (e.target && e.target.name === "choice") syncStrength();
  });

  // Capture phase: runs before HTMX's own submit handler on the form.
  document.addEventListener("submit", function (e) {
    var f = e.target;
    if (!f.matches || !f.matches("form.judge")) return;
    var isSkip = e.submitter && e.submitter.getAttribute("data-action") === "skip";
    if (!isSkip && !f.querySelector('input[name="choice"]:checked')) {
      e.preventDefault();
      e.stopPropagation();
      var hint = f.querySelector(".decision-hint");
      if (hint) hint.hidden = false;
      return;
    }
    var seconds = (performance.now() - state.shownAt) / 1000;
    var secondsInput = f.querySelector('input[name="seconds"]');
    if (secondsInput) secondsInput.value = seconds.toFixed(3);
    state.submitAt = performance.now();
    // After the first judgment the instructions fold away; they stay one click (or I) away.
    var instructions = document.getElementById("instructions");
    if (instructions && instructions.open && !isSkip) instructions.open = false;
  }, true);

  // A new #annotate-item node in the document means the next item was swapped in.
  // (htmx:load fires on content HTMX inserted, once it is in the document.)
  var lastItem = item();
  document.addEventListener("htmx:load", function () {
    var el = item();
    if (!el || el === lastItem) return;
    lastItem = el;
    state.shownAt = performance.now();
    api.items += 1;
    var started = state.submitAt;
    state.submitAt = null;
    syncStrength();
    if (started !== null) {
      // The new item is in the DOM; the next frame paints it.
      requestAnimationFrame(function () {
        api.latencies.push(performance.now() - started);
      });
    }
    if (el.getBoundingClientRect().top < 0) el.scrollIntoView({ block: "start" });
  });

  document.addEventListener("htmx:afterRequest", function (e) {
    var xhr = e.detail.xhr;
    var timing = e.detail.successful && xhr && xhr.getResponseHeader("Server-Timing");
    var m = timing && /app;[^,]*dur=([\d.]+)/.exec(timing);
    if (m) api.serverMs.push(parseFloat(m[1]));
  });

  // A failed request (network, 5xx): say so, keep the item on screen.
  document.addEventListener("htmx:afterRequest", function (e) {
    if (e.detail.successful || !form()) return;
    state.submitAt = null;
    var hint = form().querySelector(".decision-hint");
    if (hint) {
      hint.hidden = false;
      hint.textContent = "Could not reach the server (" + (e.detail.xhr ? e.detail.xhr.status : "offline") + "). Your choice is kept; press Enter to try again.";
    }
  });
})();
