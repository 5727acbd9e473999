// The review page's enhancements: keys, saving without a reload, picking up changes of the sheet.
// Everything works without this file: each form is a plain POST.
"use strict";
(function () {
  const index = document.body.dataset.index;
  let version = document.body.dataset.version;
  let dirty = false;
  const groups = () => Array.from(document.querySelectorAll("section.group"));
  let current = null;

  function focusGroup(g) {
    if (!g) return;
    if (current) current.classList.remove("focus");
    current = g;
    g.classList.add("focus");
    g.focus({preventScroll: true});
    g.scrollIntoView({block: "start", behavior: "instant"});
    history.replaceState(null, "", "#" + g.id);
  }

  function move(step) {
    const all = groups();
    const at = all.indexOf(current);
    focusGroup(all[Math.min(Math.max(at + step, 0), all.length - 1)] || all[0]);
  }

  function say(text, ok) {
    const box = document.getElementById("messages");
    box.replaceChildren();
    const p = document.createElement("p");
    p.className = "message" + (ok ? "" : " bad");
    p.textContent = text;
    box.appendChild(p);
  }

  async function submit(form, submitter) {
    const data = new FormData(form);
    if (submitter && submitter.name) data.set(submitter.name, submitter.value);
    let answer;
    try {
      const response = await fetch(form.getAttribute("action"), {  // form.action would be the button named "action"
        method: "POST", body: data, headers: {"X-Requested-With": "fetch"}});
      if (!response.ok) throw new Error(await response.text());
      answer = await response.json();
    } catch (error) {
      say("Not saved: " + error.message, false);
      return;
    }
    say(answer.message, answer.ok);
    for (const [id, value] of [["left", answer.left], ["n", answer.n], ["total-left", answer.total_left], ["total", answer.total]]) {
      document.getElementById(id).textContent = value;
    }
    version = answer.version;
    dirty = false;
    const old = form.closest("section.group");
    if (answer.html) {
      const holder = document.createElement("div");
      holder.innerHTML = answer.html;  // rendered by the server: student text escaped, no raw HTML
      const fresh = holder.firstElementChild;
      const wasCurrent = current === old;
      old.replaceWith(fresh);
      wire(fresh);
      if (wasCurrent) focusGroup(fresh);  // the grader may have moved on meanwhile: keep their place
    }
  }

  function wire(root) {
    for (const form of root.querySelectorAll("form.grade")) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        submit(form, event.submitter);
      });
      form.addEventListener("input", () => { dirty = true; });
      form.closest("section.group").addEventListener("click", (event) => {
        const g = event.currentTarget;
        if (current !== g) { if (current) current.classList.remove("focus"); current = g; g.classList.add("focus"); }
      });
    }
  }

  function clickItem(n) {
    if (!current) return;
    const button = current.querySelector(`button.item[data-key="${n}"]`);
    if (button) button.click();
  }

  function setPoints(value) {
    if (!current) return;
    const form = current.querySelector("form.grade");
    const input = form.querySelector("input[name=points]");
    input.value = value === "max" ? input.dataset.max : value;
    form.requestSubmit(form.querySelector("button.save"));
  }

  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest && event.target.closest("input, textarea, select");
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    const go = (id) => { const a = document.getElementById(id); if (a) location.href = a.href; };
    if (key === "j") move(1);
    else if (key === "k") move(-1);
    else if (key === "u") focusGroup(groups().find((g) => g.classList.contains("ungraded") && g !== current) || current);
    else if (/^[1-9]$/.test(key)) clickItem(key);
    else if (key === "0") setPoints("0");
    else if (key === "f") setPoints("max");
    else if (key === "p" && current) current.querySelector("input[name=points]").focus();
    else if (key === "c" && current) current.querySelector("textarea[name=comment]").focus();
    else if (key === "]") go("next-question");
    else if (key === "[") go("prev-question");
    else return;
    event.preventDefault();
  });

  async function poll() {
    try {
      const response = await fetch(`/q/${index}/version`, {cache: "no-store"});
      const now = (await response.json()).version;
      if (now !== version) {
        if (dirty || document.activeElement.closest("form.grade")) {
          document.getElementById("changed").hidden = false;
        } else {
          location.reload();
        }
      }
    } catch (error) { /* the server stopped: nothing to pick up */ }
  }

  wire(document);
  const start = location.hash && document.getElementById(location.hash.slice(1));
  focusGroup(start && start.classList.contains("group") ? start : groups()[0]);
  setInterval(poll, 2000);
})();
