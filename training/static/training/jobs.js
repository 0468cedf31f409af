// Running jobs refresh their row every two seconds: status, progress bar, step/total,
// ETA and error (a Cancel button asks first, and goes once the job can no longer be
// cancelled). When one finishes the page reloads once, so the next stage of a round
// (a new job), the new versions and the charts show up.
"use strict";

function formatSeconds(seconds) {
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

setInterval(async () => {
  for (const row of document.querySelectorAll('#jobs tr[data-finished="0"]')) {
    const response = await fetch(row.dataset.jobUrl, { credentials: "same-origin" });
    if (!response.ok) continue;
    const job = await response.json();
    row.className = `job-${job.status}`;
    row.querySelector(".job-status").textContent = job.status_text;
    row.querySelector("progress").value = job.progress;
    row.querySelector(".job-steps").textContent = `${job.step}/${job.total_steps}`;
    row.querySelector(".job-eta").textContent = job.eta_seconds === null ? "–" : formatSeconds(job.eta_seconds);
    row.querySelector(".job-error").textContent = job.error;
    const cancel = row.querySelector("form.job-cancel");
    if (cancel && !job.can_be_cancelled) cancel.remove();
    if (["succeeded", "failed", "cancelled"].includes(job.status)) {
      row.dataset.finished = "1";
      setTimeout(() => window.location.reload(), 1000);
    }
  }
}, 2000);

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form.job-cancel");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
});
