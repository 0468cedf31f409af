// Running jobs refresh their row every two seconds. When one finishes the page reloads
// once, so the next stage of a round (a new job) and the new versions show up.
"use strict";

setInterval(async () => {
  for (const row of document.querySelectorAll('#jobs tr[data-finished="0"]')) {
    const response = await fetch(row.dataset.jobUrl, { credentials: "same-origin" });
    if (!response.ok) continue;
    const job = await response.json();
    row.querySelector(".job-status").textContent = job.status;
    row.querySelector("progress").value = job.progress;
    row.querySelector(".job-steps").textContent = `${job.step}/${job.total_steps}`;
    row.querySelector(".job-error").textContent = job.error;
    if (["succeeded", "failed", "cancelled"].includes(job.status)) {
      row.dataset.finished = "1";
      setTimeout(() => window.location.reload(), 1000);
    }
  }
}, 2000);
