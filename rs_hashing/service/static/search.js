// The search page: typed and image queries against the service's own JSON API.
// Plain JavaScript, no libraries and nothing fetched from elsewhere (it works offline).
// Every value from the archive is shown with textContent, never parsed as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), query = $("query"), upload = $("upload"), kInput = $("k");
  const status = $("status"), hitsList = $("hits"), maps = $("maps"), button = $("search-button");
  let busy = 0;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function filters() {
    const params = new URLSearchParams();
    const k = parseInt(kInput.value, 10);
    if (!Number.isNaN(k)) params.set("k", String(k));
    for (const name of ["bbox", "after", "before"]) {
      const value = $(name).value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  function setStatus(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  async function run(label, url, options) {
    busy += 1;
    button.disabled = true;
    setStatus(label + " …");
    try {
      const response = await fetch(url, options);
      let body = null;
      try { body = await response.json(); } catch (e) { body = null; }
      if (!response.ok) {
        const message = body && body.error ? body.error : response.status + " " + response.statusText;
        setStatus("Refused: " + message, true);
        return;
      }
      render(label, body);
    } catch (error) {
      setStatus("The service cannot be reached: " + error.message, true);
    } finally {
      busy -= 1;
      button.disabled = busy > 0;
    }
  }

  function describe(metadata) {
    const name = metadata.file || metadata.tile_id || "";
    return name;
  }

  function render(label, body) {
    hitsList.replaceChildren();
    maps.replaceChildren();
    const hits = body.hits || [];
    setStatus(hits.length + " hit" + (hits.length === 1 ? "" : "s") + " for " + label + " in " +
              Math.round(body.milliseconds) + " ms (" + body.backend + ")");
    for (const hit of hits) hitsList.appendChild(card(hit));
    drawMaps(hits);
  }

  function card(hit) {
    const item = element("li", "hit");
    item.dataset.id = String(hit.id);
    item.dataset.rank = String(hit.rank);
    const picture = element("img");
    picture.alt = "item " + hit.id;
    picture.loading = "lazy";
    if (hit.thumbnail) picture.src = hit.thumbnail;
    item.appendChild(picture);
    const head = element("div", "head");
    head.appendChild(element("span", "rank", "#" + hit.rank));
    head.appendChild(element("span", "distance", "distance " + hit.hamming));
    item.appendChild(head);
    const metadata = hit.metadata || {};
    if (metadata.class) item.appendChild(element("div", "class", metadata.class));
    if (metadata.caption) item.appendChild(element("div", "caption", metadata.caption));
    const name = describe(metadata);
    if (name) item.appendChild(element("div", "name", name));
    if (metadata.acquired) item.appendChild(element("div", "acquired", String(metadata.acquired).slice(0, 19)));
    if (hit.similar) {
      const more = element("button", "secondary more-like-this", "more like this");
      more.type = "button";
      more.addEventListener("click", () => {
        const params = filters();
        run("items like #" + hit.id, hit.similar + "?" + params.toString());
      });
      item.appendChild(more);
    }
    item.addEventListener("mouseenter", () => highlight(hit.id, true));
    item.addEventListener("mouseleave", () => highlight(hit.id, false));
    return item;
  }

  function highlight(id, on) {
    for (const box of maps.querySelectorAll('.box[data-id="' + id + '"]')) box.classList.toggle("highlight", on);
  }

  function drawMaps(hits) {
    const scenes = new Map();
    for (const hit of hits) {
      if (!hit.locator) continue;
      if (!scenes.has(hit.locator.scene_id)) scenes.set(hit.locator.scene_id, { url: hit.locator.quicklook, hits: [] });
      scenes.get(hit.locator.scene_id).hits.push(hit);
    }
    for (const [sceneId, scene] of scenes) {
      const figure = element("figure", "map");
      figure.appendChild(element("figcaption", null, sceneId + ": " + scene.hits.length + " hit" +
                                 (scene.hits.length === 1 ? "" : "s")));
      const frame = element("div", "frame");
      const picture = element("img");
      picture.alt = "quicklook of " + sceneId;
      picture.src = scene.url;
      frame.appendChild(picture);
      for (const hit of scene.hits) {
        const [x0, y0, x1, y1] = hit.locator.box;
        const box = element("div", "box");
        box.dataset.id = String(hit.id);
        box.style.left = (100 * x0) + "%";
        box.style.top = (100 * y0) + "%";
        box.style.width = (100 * (x1 - x0)) + "%";
        box.style.height = (100 * (y1 - y0)) + "%";
        box.title = "#" + hit.rank + " distance " + hit.hamming;
        box.appendChild(element("span", null, hit.rank));
        frame.appendChild(box);
      }
      figure.appendChild(frame);
      maps.appendChild(figure);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = query.value.trim();
    if (!text) {
      setStatus("Type what you look for, or choose an image.", true);
      return;
    }
    const params = filters();
    params.set("text", text);
    run("“" + text + "”", "/api/search?" + params.toString());
  });

  upload.addEventListener("change", () => {
    const file = upload.files && upload.files[0];
    if (!file) return;
    const data = new FormData();
    data.append("image", file, file.name);
    run("image " + file.name, "/api/search?" + filters().toString(), { method: "POST", body: data });
    upload.value = "";
  });

  async function identify() {
    try {
      const response = await fetch("/api/health");
      const health = await response.json();
      const run = health.run || {}, index = health.index || {};
      const things = index.scenes && index.scenes.length ? "tiles of " + index.scenes.length + " scene" +
        (index.scenes.length === 1 ? "" : "s") : "images";
      $("identity").textContent = (run.method || "?").toUpperCase() + ", " + run.bits + " bits (weights " +
        run.weights + ") · " + index.count + " " + things + " · " + health.backend.kind;
      if (health.limits) {
        kInput.max = String(health.limits.max_k);
      }
    } catch (error) {
      $("identity").textContent = "service identity unavailable";
    }
  }

  identify();
  const initial = new URLSearchParams(window.location.search).get("text");
  if (initial) {
    query.value = initial;
    form.requestSubmit();
  }
})();
