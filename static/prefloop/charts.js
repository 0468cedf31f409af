// Draws the page's Plotly figures (built server-side, handed over with json_script) and
// keeps the Celery worker list fresh. No inline scripts: the CSP forbids them.
"use strict";

const specs = document.getElementById("chart-specs");
if (specs) {
  for (const [id, spec] of Object.entries(JSON.parse(specs.textContent))) {
    const target = document.getElementById(`chart-${id}`);
    if (target) Plotly.newPlot(target, spec.data, spec.layout, { displaylogo: false, responsive: true });
  }
}

const workerBox = document.getElementById("workers");

async function refreshWorkers() {
  let status;
  try {
    const response = await fetch(workerBox.dataset.url, { credentials: "same-origin" });
    status = await response.json();
  } catch (error) {
    status = { workers: [], error: `The web server did not answer (${error}).` };
  }
  const list = document.createElement("ul");
  for (const worker of status.workers) {
    const item = document.createElement("li");
    item.className = "worker-alive";
    item.textContent = `${worker.name}: queues ${worker.queues.join(", ")}`;
    list.append(item);
  }
  const note = document.createElement("p");
  note.className = status.error ? "error" : "muted";
  note.textContent = status.error || (status.workers.length ? `Checked ${new Date().toLocaleTimeString()}.`
    : "No worker answered: jobs will wait in their queues until one starts.");
  workerBox.querySelector(".worker-list").replaceChildren(list, note);
}

if (workerBox) {
  refreshWorkers();
  setInterval(refreshWorkers, 10000);
}
