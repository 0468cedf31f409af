// The labeling page: fetch a comparison, take a judgement from the keyboard (or the
// buttons), post it, show the next one without reloading. Completion HTML arrives
// already sanitized by the server (labeling/rendering.py); nothing else is inserted
// as HTML.
"use strict";

(function () {
  const root = document.getElementById("labeler");
  const urls = { next: root.dataset.nextUrl, submit: root.dataset.submitUrl, undo: root.dataset.undoUrl };
  const $ = (id) => document.getElementById(id);
  const IDLE_AFTER_MS = Number(root.dataset.idleMs); // no key, click, scroll or mouse move for this long = idle
  const EMPTY_POLL_MS = 5000;

  let current = null; // the comparison on screen
  let ranking = []; // positions picked so far, best first (K > 2)
  let busy = false; // a request is in flight: keys are ignored, so a double press sends once
  let activeMs = 0;
  let lastActivity = Date.now();
  let lastTick = Date.now();
  let emptyTimer = null;

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  async function request(url, body) {
    const options = body === undefined
      ? { headers: { Accept: "application/json" } }
      : { method: "POST", headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
          body: JSON.stringify(body) };
    const response = await fetch(url, { credentials: "same-origin", ...options });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(data.error || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  // Active time: counted only while the tab is visible and the annotator did
  // something recently, so a coffee break or a background tab does not count.
  function tick() {
    const now = Date.now();
    if (document.visibilityState === "visible" && now - lastActivity < IDLE_AFTER_MS) activeMs += now - lastTick;
    lastTick = now;
  }
  setInterval(tick, 500);
  for (const type of ["keydown", "mousemove", "mousedown", "scroll", "touchstart", "wheel"]) {
    window.addEventListener(type, () => { tick(); lastActivity = Date.now(); }, { passive: true });
  }
  document.addEventListener("visibilitychange", () => { tick(); lastActivity = Date.now(); });

  function toast(text, isError) {
    const el = $("toast");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  function renderedBlock(html) {
    const div = document.createElement("div");
    div.className = "rendered";
    if (html.trim()) div.innerHTML = html; // sanitized server-side
    else div.innerHTML = '<p class="empty">(empty response)</p>';
    return div;
  }

  // An answer that hit the token cap stops mid-sentence: say so, so that it is judged
  // on what it says (the mark is text, never HTML).
  function cutOffMark(tokens) {
    const text = tokens > 0 ? `cut off at ${tokens} tokens` : "cut off at the token limit";
    const mark = Object.assign(document.createElement("p"), { className: "cut-off", textContent: `✂ ${text}` });
    mark.setAttribute("role", "note");
    mark.setAttribute("aria-label", `This answer was ${text}: it did not finish.`);
    return mark;
  }

  function show(state) {
    $("labeled-count").textContent = state.counts.labeled;
    $("queue-count").textContent = state.counts.queue;
    current = state.comparison;
    clearTimeout(emptyTimer);
    $("empty").hidden = current !== null;
    $("task").hidden = current === null;
    if (current === null) {
      emptyTimer = setTimeout(loadNext, EMPTY_POLL_MS);
      return;
    }
    const history = $("history");
    history.replaceChildren();
    for (const turn of current.history) {
      const block = renderedBlock(turn.html);
      block.classList.add("turn");
      block.dataset.role = turn.role;
      block.prepend(Object.assign(document.createElement("h3"), { className: "who-says", textContent: turn.role }));
      history.append(block);
    }
    $("prompt").innerHTML = current.prompt_html; // sanitized server-side
    const run = current.run;
    const guidelines = $("guidelines");
    if (guidelines.dataset.run !== run.name) guidelines.open = Boolean(run.guidelines_html); // a new run: show its rules
    guidelines.dataset.run = run.name;
    $("run-name").textContent = run.name;
    $("guidelines-hint").hidden = !run.guidelines_html;
    $("guidelines-text").innerHTML = run.guidelines_html; // sanitized server-side
    const container = $("completions");
    container.replaceChildren();
    const k = current.completions.length;
    for (const completion of current.completions) {
      const card = document.createElement("article");
      card.className = "card completion";
      card.dataset.position = completion.position;
      const title = k === 2 ? (completion.position === 0 ? "Left · 1" : "Right · 2") : `Response ${completion.position + 1}`;
      card.append(Object.assign(document.createElement("h3"), { textContent: title }), renderedBlock(completion.html));
      if (completion.cut_off_at !== null) card.append(cutOffMark(completion.cut_off_at));
      container.append(card);
    }
    $("pair-choices").hidden = k !== 2;
    $("ranking-choices").hidden = k === 2;
    ranking = [];
    showRanking();
    for (const radio of document.querySelectorAll('input[name="strength"]')) radio.checked = false;
    $("rationale").value = "";
    activeMs = 0;
    // Reading starts when the comparison appears, however long it took to arrive.
    lastTick = lastActivity = Date.now();
    window.scrollTo(0, 0);
  }

  function showRanking() {
    $("ranking-so-far").textContent = ranking.length ? ranking.map((p) => p + 1).join(" > ") : "–";
    for (const card of document.querySelectorAll(".completion")) {
      card.classList.toggle("picked", ranking.includes(Number(card.dataset.position)));
    }
  }

  async function loadNext() {
    try {
      show(await request(urls.next, {}));
    } catch (error) {
      toast(`Could not load the next comparison: ${error.message}`, true);
      emptyTimer = setTimeout(loadNext, EMPTY_POLL_MS);
    }
  }

  const CHOICE_NAMES = { a: "left better", b: "right better", tie: "tie", both_bad: "both bad", skip: "skipped",
                         ranking: "ranked" };

  async function submit(choice) {
    if (busy || current === null) return;
    busy = true;
    tick();
    const strength = document.querySelector('input[name="strength"]:checked');
    const body = {
      comparison_id: current.id,
      choice,
      ranking: choice === "ranking" ? ranking : null,
      strength: strength ? Number(strength.value) : null,
      rationale: $("rationale").value,
      active_seconds: activeMs / 1000,
    };
    try {
      await request(urls.submit, body);
      toast(`Saved: ${CHOICE_NAMES[choice]}. Press u to undo.`);
      show(await request(urls.next, {}));
    } catch (error) {
      toast(`Not saved: ${error.message}`, true);
      // 409: the comparison is no longer this person's to label; move on to the next one.
      if (error.status === 409) loadNext();
    } finally {
      busy = false;
    }
  }

  async function undo() {
    if (busy) return;
    busy = true;
    try {
      const state = await request(urls.undo, {});
      show(state);
      toast(state.undone ? "Undone: label it again." : "Nothing to undo.");
    } catch (error) {
      toast(`Could not undo: ${error.message}`, true);
    } finally {
      busy = false;
    }
  }

  function pickRank(position) {
    const k = current.completions.length;
    if (position >= k || ranking.includes(position)) return;
    ranking.push(position);
    if (ranking.length === k - 1) {
      // The last one is implied.
      for (let p = 0; p < k; p++) if (!ranking.includes(p)) ranking.push(p);
      showRanking();
      submit("ranking");
      return;
    }
    showRanking();
  }

  function setStrength(value) {
    const radio = document.querySelector(`input[name="strength"][value="${value}"]`);
    radio.checked = !radio.checked; // the same key again clears it
  }

  document.addEventListener("keydown", (event) => {
    const typing = event.target.matches("textarea, input[type=text], input:not([type])");
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (key === "u") { event.preventDefault(); undo(); return; }
    if (current === null) return;
    const pair = current.completions.length === 2;
    const actions = {
      s: () => submit("skip"),
      q: () => setStrength(1), w: () => setStrength(2), e: () => setStrength(3),
      r: () => $("rationale").focus(),
    };
    if (pair) {
      Object.assign(actions, {
        1: () => submit("a"), ArrowLeft: () => submit("a"),
        2: () => submit("b"), ArrowRight: () => submit("b"),
        3: () => submit("tie"), 4: () => submit("both_bad"),
      });
    } else {
      Object.assign(actions, {
        0: () => submit("both_bad"),
        Backspace: () => { ranking = []; showRanking(); },
      });
      if (/^[1-9]$/.test(key)) actions[key] = () => pickRank(Number(key) - 1);
    }
    if (actions[key]) {
      event.preventDefault();
      actions[key]();
    }
  });

  root.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.choice) submit(button.dataset.choice);
    else if (button.dataset.action === "undo") undo();
    else if (button.dataset.action === "clear-ranking") { ranking = []; showRanking(); }
    button.blur();
  });

  loadNext();
})();
