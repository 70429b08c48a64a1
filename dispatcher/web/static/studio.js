// The template studio's live preview: as the text in the editor changes, ask the server
// (POST /ui/templates/preview, the session's CSRF token in the form) for the rendered
// message, its SMS encoding, segments and cost, the lint problems by line and the diff
// from the approved text, and show them. Everything the server sends is put in the page
// as text (textContent), never as HTML; an e-mail's HTML body goes into a sandboxed
// iframe that may run no script. Served from the console's own origin (no inline script).
(function () {
  "use strict";
  var root = document.getElementById("studio");
  if (!root) { return; }
  var editor = document.getElementById("content");
  var gutter = document.getElementById("gutter");
  var caseInput = document.getElementById("preview-case");
  var status = document.getElementById("preview-status");
  var DELAY_MS = 350;
  var timer = null;
  var sent = 0;

  function byId(id) { return document.getElementById(id); }

  function setText(id, value) {
    var el = byId(id);
    if (el) { el.textContent = value === null || value === undefined ? "" : String(value); }
  }

  function show(id, visible) {
    var el = byId(id);
    if (el) { el.hidden = !visible; }
  }

  function lineCount() { return editor.value.split("\n").length; }

  function drawGutter(problemLines) {
    var lines = [];
    var n = lineCount();
    gutter.textContent = "";
    for (var i = 1; i <= n; i++) {
      var div = document.createElement("div");
      div.textContent = String(i);
      if (problemLines[i]) { div.className = "bad"; div.title = problemLines[i]; }
      gutter.appendChild(div);
      lines.push(div);
    }
    gutter.scrollTop = editor.scrollTop;
  }

  function goToLine(line) {
    var parts = editor.value.split("\n");
    var start = 0;
    for (var i = 0; i < line - 1 && i < parts.length; i++) { start += parts[i].length + 1; }
    var end = start + (parts[line - 1] || "").length;
    editor.focus();
    editor.setSelectionRange(start, end);
  }

  function drawProblems(problems, error) {
    var list = byId("problems");
    list.textContent = "";
    var marks = {};
    var all = (error ? [error] : []).concat(problems || []);
    all.forEach(function (p) {
      var li = document.createElement("li");
      li.setAttribute("data-line", String(p.line));
      var a = document.createElement("a");
      a.href = "#content";
      a.textContent = root.getAttribute("data-line-word") + " " + p.line;
      a.addEventListener("click", function (ev) { ev.preventDefault(); goToLine(p.line); });
      li.appendChild(a);
      li.appendChild(document.createTextNode(": " + p.message));
      list.appendChild(li);
      marks[p.line] = (marks[p.line] ? marks[p.line] + "\n" : "") + p.message;
    });
    show("no-problems", all.length === 0);
    drawGutter(marks);
  }

  function drawDiff(lines) {
    var pre = byId("diff");
    pre.textContent = "";
    (lines || []).forEach(function (line) {
      var span = document.createElement("span");
      span.textContent = line + "\n";
      if (line.indexOf("+") === 0 && line.indexOf("+++") !== 0) { span.className = "add"; }
      else if (line.indexOf("-") === 0 && line.indexOf("---") !== 0) { span.className = "del"; }
      else if (line.indexOf("@@") === 0) { span.className = "hunk"; }
      pre.appendChild(span);
    });
    show("diff", (lines || []).length > 0);
    show("no-diff", (lines || []).length === 0);
  }

  function draw(body) {
    setText("preview-case-id", body.case_id);
    setText("preview-subject", body.subject);
    show("preview-subject-row", body.subject !== undefined && body.subject !== null);
    setText("preview-text", body.text);
    var frame = byId("preview-html");
    if (frame) {
      frame.hidden = !body.html;
      frame.srcdoc = body.html || "";
    }
    setText("sms-encoding", body.encoding || "-");
    setText("sms-segments", body.segments === null || body.segments === undefined ? "-" : body.segments);
    setText("sms-units", body.units === null || body.units === undefined ? "-" : body.units);
    setText("cost", body.cost === null || body.cost === undefined ? "-" : body.cost + " " + body.currency);
    setText("cost-basis", body.cost_basis);
    // a text that does not render for the case is answered 422 with `error` as the
    // sentence the status line shows ("line N: ..."); lint lists it by line already
    drawProblems(body.problems, body.error && typeof body.error === "object" ? body.error : null);
    if (body.diff) { drawDiff(body.diff); }
  }

  function refresh() {
    var mine = ++sent;
    var form = new URLSearchParams();
    form.set("csrf", root.getAttribute("data-csrf"));
    form.set("template_id", root.getAttribute("data-template-id"));
    form.set("locale", root.getAttribute("data-locale"));
    form.set("content", editor.value);
    if (caseInput && caseInput.value.trim()) { form.set("case_id", caseInput.value.trim()); }
    status.textContent = root.getAttribute("data-working");
    fetch(root.getAttribute("data-preview-url"), {
      method: "POST",
      body: form,
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      if (type.indexOf("application/json") !== 0) {
        throw new Error(root.getAttribute("data-expired"));
      }
      return response.json().then(function (body) { return { ok: response.ok, body: body }; });
    }).then(function (result) {
      if (mine !== sent) { return; }  // an older answer arriving after a newer one
      if (result.body.text !== undefined || result.body.problems !== undefined) { draw(result.body); }
      if (!result.ok && result.body.text === undefined) {
        drawProblems([], null);
      }
      status.textContent = result.ok ? "" : result.body.error;
      status.className = result.ok ? "muted" : "error";
      root.setAttribute("data-previews", String(Number(root.getAttribute("data-previews") || "0") + 1));
    }).catch(function (err) {
      if (mine !== sent) { return; }
      status.textContent = err.message;
      status.className = "error";
    });
  }

  function later() {
    if (timer !== null) { clearTimeout(timer); }
    timer = setTimeout(refresh, DELAY_MS);
    drawGutter({});
  }

  editor.addEventListener("input", later);
  editor.addEventListener("scroll", function () { gutter.scrollTop = editor.scrollTop; });
  if (caseInput) { caseInput.addEventListener("change", refresh); }
  var problemLinks = document.querySelectorAll("#problems li[data-line]");
  var marks = {};
  Array.prototype.forEach.call(problemLinks, function (li) {
    var line = Number(li.getAttribute("data-line"));
    marks[line] = li.textContent;
    var a = li.querySelector("a");
    if (a) { a.addEventListener("click", function (ev) { ev.preventDefault(); goToLine(line); }); }
  });
  drawGutter(marks);
  root.setAttribute("data-ready", "1");
})();
