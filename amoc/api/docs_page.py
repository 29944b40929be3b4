"""The /api-docs page: self-contained HTML and JS (works offline, loads nothing else).

It renders every operation of the OpenAPI document embedded in it and lets the user
send each one with the bearer token typed at the top.
"""

from __future__ import annotations

import json
from typing import Any

_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>amoc REST API</title>
<style>
  :root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #f6f7f9; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, sans-serif; color: var(--fg);
         background: var(--bg); }
  header { background: #1d2330; color: #fff; padding: 18px 28px; }
  header h1 { margin: 0 0 4px; font-size: 22px; }
  header .intro { color: #c9d1e0; max-width: 900px; font-size: 14px; }
  header code { background: #343c4d; color: #fff; }
  main { max-width: 1100px; margin: 0 auto; padding: 18px 28px 40px; }
  .auth { display: flex; gap: 10px; align-items: center; background: #fff; padding: 12px 16px;
          border: 1px solid var(--line); border-radius: 8px; margin-bottom: 16px; }
  .auth input { flex: 1; padding: 7px 9px; font: inherit; border: 1px solid var(--line);
                border-radius: 5px; }
  nav { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 16px;
        margin-bottom: 16px; columns: 2; }
  nav a { display: block; color: var(--fg); text-decoration: none; padding: 2px 0; }
  nav a:hover { text-decoration: underline; }
  h2.tag { text-transform: capitalize; font-size: 17px; margin: 22px 0 8px; }
  .op { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 10px 0;
        overflow: hidden; }
  .op > summary { list-style: none; cursor: pointer; padding: 9px 14px; display: flex;
                  gap: 12px; align-items: center; }
  .op > summary::-webkit-details-marker { display: none; }
  .method { font: bold 12px/1 ui-monospace, monospace; color: #fff; border-radius: 4px;
            padding: 5px 0; width: 62px; text-align: center; }
  .GET { background: #2f6fdb; } .POST { background: #1f9d55; }
  .PATCH { background: #c77d0a; } .PUT { background: #8a4fd3; } .DELETE { background: #d43d3d; }
  .path { font: 14px ui-monospace, monospace; }
  .summary { color: var(--muted); }
  .lock { margin-left: auto; font-size: 12px; color: var(--muted); }
  .body { padding: 4px 14px 14px; border-top: 1px solid var(--line); }
  .body p { margin: 8px 0; }
  code { font-family: ui-monospace, monospace; background: #eef1f5; padding: 0 3px;
         border-radius: 3px; }
  label { display: block; font-size: 13px; color: var(--muted); margin-top: 8px; }
  textarea, .param { width: 100%; font: 13px ui-monospace, monospace; padding: 7px;
                     border: 1px solid var(--line); border-radius: 5px; }
  textarea { min-height: 90px; }
  button { margin-top: 10px; font: inherit; padding: 6px 16px; border: 0; border-radius: 5px;
           background: #1d2330; color: #fff; cursor: pointer; }
  .codes { font-size: 13px; color: var(--muted); margin-top: 8px; }
  pre { background: #1d2330; color: #e8ecf3; padding: 10px; border-radius: 6px;
        overflow: auto; max-height: 360px; font-size: 13px; }
  .curl { white-space: pre-wrap; word-break: break-all; }
  .status-ok { color: #1f9d55; font-weight: bold; }
  .status-err { color: #d43d3d; font-weight: bold; }
</style>
</head>
<body>
<header>
  <h1 id="title">amoc REST API</h1>
  <div class="intro" id="intro"></div>
</header>
<main>
  <div class="auth">
    <strong>Token</strong>
    <input id="token" type="password" autocomplete="off"
           placeholder="the node's api_token (or the content of run/&lt;node&gt;/api_token)">
  </div>
  <nav id="toc"></nav>
  <div id="operations"><noscript>This page needs JavaScript; the OpenAPI document is at
    <a href="api-docs/openapi.json">/api-docs/openapi.json</a>.</noscript></div>
</main>
<script type="application/json" id="openapi-document">__OPENAPI__</script>
<script>
"use strict";
(function () {
  const TOKEN_KEY = "amoc-api-token";
  const tokenInput = document.getElementById("token");
  tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
  tokenInput.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, tokenInput.value));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(typeof child === "string" ? document.createTextNode(child) : child);
      }
    }
    return node;
  }

  // `code` spans in descriptions become <code>; everything else stays text.
  function prose(text) {
    const p = el("p");
    String(text || "").split("`").forEach((part, i) => {
      p.append(i % 2 ? el("code", {}, part) : part);
    });
    return p;
  }

  function schemaOf(doc, ref) {
    const name = ref && ref.$ref ? ref.$ref.split("/").pop() : null;
    return name ? doc.components.schemas[name] : ref;
  }

  // A shell line for the same call; the body in single quotes, the token from $TOKEN.
  function curlFor(method, path, body, isPublic) {
    let line = "curl -s -X " + method;
    if (!isPublic) line += ' -H "Authorization: Bearer $TOKEN"';
    if (body !== null) {
      line += " -H 'Content-Type: application/json' -d '" + body.replace(/'/g, "'\\''") + "'";
    }
    return line + " " + location.origin + path;
  }

  async function send(method, path, op, inputs, textarea, out) {
    let url = path;
    for (const [name, input] of Object.entries(inputs)) {
      url = url.replace("{" + name + "}", encodeURIComponent(input.value));
    }
    const headers = {};
    const isPublic = Array.isArray(op.security) && op.security.length === 0;
    if (!isPublic && tokenInput.value) headers["Authorization"] = "Bearer " + tokenInput.value;
    const init = { method: method, headers: headers };
    if (textarea) { headers["Content-Type"] = "application/json"; init.body = textarea.value; }
    out.replaceChildren("sending...");
    try {
      const response = await fetch(url, init);
      const text = await response.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
      const cls = response.ok ? "status-ok" : "status-err";
      out.replaceChildren(el("span", { class: cls }, response.status + " " + response.statusText),
                          "\n" + shown);
    } catch (e) {
      out.replaceChildren(el("span", { class: "status-err" }, "request failed: " + e));
    }
  }

  function render(doc) {
    document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
    const intro = document.getElementById("intro");
    intro.replaceChildren(...String(doc.info.description || "").split(/\n\s*\n/).map(prose));
    const toc = document.getElementById("toc");
    const ops = document.getElementById("operations");
    ops.replaceChildren();
    const byTag = new Map();
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(item)) {
        const tag = (op.tags && op.tags[0]) || "other";
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push([method.toUpperCase(), path, op]);
      }
    }
    for (const [tag, list] of byTag) {
      ops.append(el("h2", { class: "tag" }, tag));
      for (const [method, path, op] of list) {
        const id = "op-" + method.toLowerCase() + path.replace(/[^A-Za-z0-9]+/g, "-");
        const isPublic = Array.isArray(op.security) && op.security.length === 0;
        toc.append(el("a", { href: "#" + id, class: "toc-entry" },
                      el("code", {}, method), " " + path + " - " + op.summary));
        const body = el("div", { class: "body" });
        if (op.description) body.append(prose(op.description));
        const inputs = {};
        for (const param of op.parameters || []) {
          const input = el("input", { class: "param", placeholder: param.name });
          inputs[param.name] = input;
          body.append(el("label", {}, param.name + " (" + param.in + ")"), input);
        }
        let textarea = null;
        let example = null;
        if (op.requestBody) {
          const schema = schemaOf(doc, op.requestBody.content["application/json"].schema);
          example = JSON.stringify(schema.example || {});
          textarea = el("textarea", { spellcheck: "false" });
          textarea.value = JSON.stringify(schema.example || {}, null, 2);
          body.append(el("label", {}, "JSON body"), textarea);
        }
        const codes = prose("Answers: " + Object.entries(op.responses || {})
          .map(([code, r]) => code + " " + r.description).join(" \u00b7 "));
        codes.className = "codes";
        body.append(codes);
        body.append(el("pre", { class: "curl" }, curlFor(method, path, example, isPublic)));
        const out = el("pre", { class: "response" }, "(no request sent yet)");
        const button = el("button", { type: "button" }, "Send");
        button.addEventListener("click", () => send(method, path, op, inputs, textarea, out));
        body.append(button, out);
        const attrs = { class: "op", id: id, "data-method": method, "data-path": path };
        const details = el("details", attrs,
          el("summary", {},
             el("span", { class: "method " + method }, method),
             el("span", { class: "path" }, path),
             el("span", { class: "summary" }, op.summary),
             el("span", { class: "lock" }, isPublic ? "no token" : "token")),
          body);
        if (!ops.querySelector("details")) details.open = true;  // show one opened
        ops.append(details);
      }
    }
  }

  const embedded = document.getElementById("openapi-document").textContent;
  let doc = null;
  try { doc = JSON.parse(embedded); } catch (e) { doc = null; }
  if (doc && doc.paths) {
    render(doc);
  } else {
    fetch(location.pathname.replace(/\/$/, "") + "/openapi.json")
      .then((r) => r.json()).then(render)
      .catch((e) => { document.getElementById("operations").textContent = "cannot load: " + e; });
  }
})();
</script>
</body>
</html>
"""


def render(document: dict[str, Any]) -> str:
    """The page with `document` embedded (`<` escaped so that it cannot close the script)."""
    text = json.dumps(document, allow_nan=False).replace("<", "\\u003c")
    return _TEMPLATE.replace("__OPENAPI__", text)
