// rtgate console: refreshes the live sessions table and copies a new key's secret.
// Everything else is plain HTML forms, so the console works without this script.
"use strict";

function fmtDuration(s) {
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (s < 3600) return m + " min " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
  return Math.floor(s / 3600) + " h " + String(m % 60).padStart(2, "0") + " min";
}

function fmtUsd(v) {
  const d = Number(v);
  return "$" + d.toFixed(6);
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function liveRow(s) {
  const tr = document.createElement("tr");
  tr.dataset.sessionId = s.id;
  const id = document.createElement("td");
  const code = document.createElement("code");
  code.textContent = s.id;
  id.append(code);
  if (s.intent) {
    const b = document.createElement("span");
    b.className = "badge";
    b.textContent = s.intent;
    id.append(" ", b);
  }
  const t = s.tokens;
  const running = cell(fmtDuration(s.running_s || 0));
  running.dataset.started = s.started_at || "";
  const close = document.createElement("td");
  const a = document.createElement("a");
  a.className = "button danger";
  a.href = "/ui/sessions/" + encodeURIComponent(s.id) + "/close";
  a.textContent = "Close";
  const hidden = document.createElement("span");
  hidden.className = "sr-only";
  hidden.textContent = " " + s.id;
  a.append(hidden);
  close.append(a);
  tr.append(id, cell(s.key_name), cell(s.model), running,
    cell((t.text_in + t.audio_in + t.image_in) + " / " + (t.text_out + t.audio_out), "num"),
    cell(fmtUsd(s.cost_usd), "num"), close);
  return tr;
}

function refreshLive(table) {
  const body = table.tBodies[0];
  const status = document.getElementById("live-updated");
  fetch(table.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
    .then((rows) => {
      // Keep the row that has focus (a person tabbing to Close) if it is still live.
      const focused = document.activeElement && document.activeElement.closest("tr");
      const keep = focused && body.contains(focused) ? focused.dataset.sessionId : null;
      const fresh = rows.map(liveRow);
      body.replaceChildren(...(fresh.length ? fresh : [emptyRow()]));
      if (keep) {
        const again = body.querySelector(`tr[data-session-id="${CSS.escape(keep)}"] a`);
        if (again) again.focus();
      }
      // In UTC, 24-hour, as every time the console's pages render (web/render.py, ``when``).
      if (status) status.textContent = "(updated " + new Date().toISOString().slice(11, 19) + " UTC)";
    })
    .catch((err) => { if (status) status.textContent = "(not updated: " + err.message + ")"; });
}

function emptyRow() {
  const tr = document.createElement("tr");
  tr.className = "empty";
  const td = cell("No live session.", "muted");
  td.colSpan = 7;
  tr.append(td);
  return tr;
}

function copySecret(button) {
  const input = document.getElementById(button.dataset.copy);
  const said = button.parentElement.querySelector(".copied");
  const done = () => { if (said) said.textContent = "Copied."; };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(input.value).then(done, () => { input.select(); });
  } else {
    input.select();
    if (document.execCommand("copy")) done();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.src) {
    setInterval(() => refreshLive(live), 2000);
  }
  for (const b of document.querySelectorAll("button[data-copy]")) {
    b.addEventListener("click", () => copySecret(b));
  }
});
