// prodvec's search page: talks to the JSON API of the same server, no build step, no dependencies.
import { api, apiKey, setApiKey } from "./api.js";
import { formatAge, formatMs, prettyCategory } from "./format.js";

const STATUS_EVERY_MS = 15000;
const $ = (id) => document.getElementById(id);

const els = {
  photo: $("photo"), dropzone: $("dropzone"), preview: $("preview"), dropFile: $("dropzone-file"),
  textForm: $("text-form"), text: $("text"), queryHeading: $("query-heading"),
  filterForm: $("filter-form"), filterBox: $("filters"), filterCount: $("filter-count"),
  categories: $("categories"), minPrice: $("min-price"), maxPrice: $("max-price"), inStock: $("in-stock"),
  k: $("k"), reset: $("reset"),
  results: $("results"), queryThumb: $("query-thumb"), heading: $("results-heading"), sub: $("results-sub"),
  clear: $("clear-query"), meta: $("meta"),
  error: $("error"), errorTitle: $("error-title"), errorMessage: $("error-message"),
  grid: $("grid"), empty: $("empty"), emptyStart: $("empty-start"), emptyNone: $("empty-none"),
  cardTemplate: $("card-template"),
  queue: $("queue"), queueAge: $("queue-age"),
  keyButton: $("key-button"), keyLabel: $("key-button-label"), keyDialog: $("key-dialog"), keyForm: $("key-form"),
  keyInput: $("key-input"), keyHint: $("key-hint"), keyForget: $("key-forget"), keyCancel: $("key-cancel"),
};

// What the results show: {kind: "image", file} | {kind: "text", text} | {kind: "similar", sku, title}.
let query = null;
let inFlight = null;
let previewUrl = null;

// ---- filters ------------------------------------------------------------------------------

function filters() {
  const chosen = [...els.categories.querySelectorAll("input:checked")].map((box) => box.value);
  const result = { category: chosen, k: Number(els.k.value) };
  if (els.minPrice.value !== "") result.min_price = els.minPrice.value;
  if (els.maxPrice.value !== "") result.max_price = els.maxPrice.value;
  if (els.inStock.checked) result.in_stock = true;
  return result;
}

function filterParams(target) {
  const f = filters();
  for (const name of f.category) target.append("category", name);
  target.append("k", String(f.k));
  if (f.min_price !== undefined) target.append("min_price", f.min_price);
  if (f.max_price !== undefined) target.append("max_price", f.max_price);
  if (f.in_stock) target.append("in_stock", "true");
  return target;
}

async function loadCategories() {
  try {
    const list = await api("/v1/categories");
    els.categories.replaceChildren(...list.map(categoryChip));
    if (!list.length) els.categories.replaceChildren(note("No categories in the catalog yet."));
  } catch (err) {
    els.categories.replaceChildren(note(`Categories unavailable: ${err.message}`));
    if (err.status === 401 || err.status === 403) askForKey(err.message);
  }
}

function categoryChip(category) {
  const id = `cat-${category.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const wrap = document.createElement("span");
  wrap.className = "chip-toggle";
  const box = Object.assign(document.createElement("input"), { type: "checkbox", id, value: category.name, name: "category" });
  const label = document.createElement("label");
  label.htmlFor = id;
  label.append(prettyCategory(category.name));
  const count = Object.assign(document.createElement("span"), { className: "count", textContent: String(category.products) });
  count.setAttribute("aria-label", `${category.products} products`);
  label.append(" ", count);
  wrap.append(box, label);
  return wrap;
}

function note(text) {
  return Object.assign(document.createElement("span"), { className: "muted small", textContent: text });
}

// ---- searching ----------------------------------------------------------------------------

async function run() {
  if (!query) return;
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;
  hideError();
  setBusy(true);
  describeQuery();
  try {
    const answer = await request(query, controller.signal);
    if (controller !== inFlight) return;
    render(answer);
  } catch (err) {
    if (err.name === "AbortError") return;
    clearGrid();
    els.meta.hidden = true;
    showError(err);
  } finally {
    if (controller === inFlight) {
      setBusy(false);
      inFlight = null;
    }
  }
}

function request(q, signal) {
  if (q.kind === "image") {
    const form = filterParams(new FormData());
    form.append("image", q.file, q.file.name || "photo");
    return api("/v1/search", { method: "POST", body: form, signal });
  }
  if (q.kind === "text") {
    return api("/v1/search", {
      method: "POST", signal,
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: q.text, ...filters() }),  // an empty category list means any
    });
  }
  const params = filterParams(new URLSearchParams());
  return api(`/v1/products/${encodeURIComponent(q.sku)}/similar?${params}`, { signal });
}

function describeQuery() {
  els.clear.hidden = !query;
  els.queryThumb.hidden = query?.kind !== "similar" || !query.imageUrl;
  if (!els.queryThumb.hidden) loadThumb(els.queryThumb, query.imageUrl);
  if (!query) {
    els.heading.textContent = "Find similar products";
    els.sub.textContent = "Start with a product photo: the closest items in the catalog appear here.";
    return;
  }
  if (query.kind === "image") {
    els.heading.textContent = "Similar to your photo";
    els.sub.textContent = query.file.name ? `Nearest products to ${query.file.name}` : "Nearest products to the photo you gave";
  } else if (query.kind === "text") {
    els.heading.textContent = `Matches for “${query.text}”`;
    els.sub.textContent = "Nearest products to the description";
  } else {
    els.heading.textContent = `More like ${query.title || query.sku}`;
    els.sub.replaceChildren("Nearest products to ",
      Object.assign(document.createElement("span"), { className: "query-sku", textContent: query.sku }),
      ", which is itself left out");
  }
}

function render(answer) {
  const hits = answer.hits || [];
  clearGrid();
  els.grid.append(...hits.map(card));
  showEmpty(hits.length ? null : els.emptyNone);
  renderMeta(answer, hits.length);
}

function renderMeta(answer, count) {
  const parts = [Object.assign(document.createElement("span"), {
    className: "count", textContent: `${count} ${count === 1 ? "result" : "results"}`,
  })];
  const how = document.createElement("span");
  how.className = `badge ${answer.exact ? "badge-exact" : "badge-index"}`;
  how.textContent = answer.exact ? "Exact"
    : answer.recall != null ? `From the index · recall ${answer.recall.toFixed(2)}` : "From the index";
  if (answer.strategy && answer.strategy !== "exact" && answer.strategy !== "hnsw") how.append(` · ${answer.strategy}`);
  how.title = (answer.exact
    ? "Every product that matches the filters was compared: these are the true nearest."
    : "The approximate (HNSW) index answered: as complete as the index's recall.")
    + (answer.strategy ? ` Strategy: ${answer.strategy}.` : "");
  how.dataset.exact = String(Boolean(answer.exact));
  how.dataset.strategy = answer.strategy || "";
  parts.push(how);
  if (answer.model) parts.push(badge("Model", answer.model, "model"));
  if (typeof answer.took_ms === "number") {
    const took = Object.assign(document.createElement("span"), {
      className: "took", textContent: `in ${formatMs(answer.took_ms)}`,
    });
    took.dataset.tookMs = String(answer.took_ms);
    parts.push(took);
  }
  els.meta.replaceChildren(...parts);
  els.meta.hidden = false;
}

function badge(label, value, field) {
  const span = Object.assign(document.createElement("span"), { className: "badge badge-plain" });
  span.dataset.field = field;
  span.append(`${label} `, Object.assign(document.createElement("code"), { textContent: value }));
  return span;
}

function card(hit) {
  const node = els.cardTemplate.content.firstElementChild.cloneNode(true);
  node.dataset.sku = hit.sku;
  const set = (field, text) => { node.querySelector(`[data-field="${field}"]`).textContent = text; };
  set("category", prettyCategory(hit.category));
  set("title", hit.title || hit.sku);
  set("sku", hit.sku);
  set("price", Number(hit.price).toFixed(2));
  const distance = node.querySelector('[data-field="distance"]');
  distance.textContent = `distance ${Number(hit.distance).toFixed(3)}`;
  distance.title = "Cosine distance to the query: 0 is the same direction, 2 the opposite";
  distance.dataset.value = String(hit.distance);
  const stock = node.querySelector('[data-field="stock"]');
  stock.textContent = hit.stock > 0 ? `${hit.stock} in stock` : "Out of stock";
  stock.classList.add(hit.stock > 0 ? "in" : "out");
  stock.dataset.value = String(hit.stock);
  node.querySelector('[data-field="price"]').dataset.value = String(hit.price);
  node.querySelector('[data-field="category"]').dataset.value = hit.category;
  const img = node.querySelector(".thumb img");
  img.alt = hit.title || hit.sku;
  loadThumb(img, hit.image_url);
  const more = node.querySelector(".more");
  more.setAttribute("aria-label", `More like ${hit.title || hit.sku}`);
  more.addEventListener("click", () => {
    query = { kind: "similar", sku: hit.sku, title: hit.title, imageUrl: hit.image_url };
    forgetPhoto();
    run().then(() => els.heading.focus());
  });
  return node;
}

// Thumbnails: the hit's image_url (/images/{sku}, open without a key); none or a broken one: a blank tile.
function loadThumb(img, url) {
  const failed = () => {
    const box = img.closest(".thumb");
    if (box) box.classList.add("no-image");
    else img.hidden = true;
  };
  img.addEventListener("error", failed, { once: true });
  if (url) img.src = url;
  else failed();
}

// The empty state: before any search (emptyStart), nothing matched (emptyNone) or none (null).
function showEmpty(which) {
  els.empty.hidden = !which;
  els.emptyStart.hidden = which !== els.emptyStart;
  els.emptyNone.hidden = which !== els.emptyNone;
}

function clearGrid() {
  els.grid.replaceChildren();
}

function setBusy(busy) {
  els.results.setAttribute("aria-busy", String(busy));
  els.grid.classList.toggle("is-loading", busy);
  if (busy && !els.grid.children.length) {
    showEmpty(null);
    els.meta.hidden = false;
    els.meta.textContent = "Searching…";
  }
}

function showError(err) {
  const titles = {
    0: "Server unreachable", 401: "API key needed", 403: "API key refused", 404: "Not found",
    409: "Not embedded yet", 413: "Photo too large", 415: "Not an image",
    // A photo search's 422 may be the photo (truncated or corrupt) or a filter: the message says which.
    422: query?.kind === "image" ? "Check the photo and filters" : "Check the filters",
    503: "Server busy", 504: "Search timed out",
  };
  els.errorTitle.textContent = titles[err.status] || (err.status >= 500 ? "Server error" : "Search failed");
  els.errorMessage.textContent = err.message;
  els.error.hidden = false;
  showEmpty(null);
  if (err.status === 401 || err.status === 403) askForKey(err.message);
}

function hideError() {
  els.error.hidden = true;
}

// ---- the photo ----------------------------------------------------------------------------

function usePhoto(file) {
  if (!file) return;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  els.preview.src = previewUrl;
  els.preview.alt = `Your photo: ${file.name || "pasted image"}`;
  els.preview.hidden = false;
  els.dropFile.hidden = true;
  els.dropzone.classList.add("has-photo");
  query = { kind: "image", file };
  run();
}

// The photo is no longer the query ("more like this" or Clear): the drop zone is empty again.
function forgetPhoto() {
  els.preview.hidden = true;
  els.preview.removeAttribute("src");
  els.dropFile.hidden = true;
  els.dropzone.classList.remove("has-photo");
  els.photo.value = "";
}

// A file the browser cannot show (the server will say why it cannot search with it): its name.
els.preview.addEventListener("error", () => {
  if (!els.preview.hidden && query?.kind === "image") {
    els.preview.hidden = true;
    els.dropFile.textContent = query.file.name || "the chosen file";
    els.dropFile.hidden = false;
  }
});

els.photo.addEventListener("change", () => usePhoto(els.photo.files[0]));
// Chromium opens a focused file input on Space only; the drop zone looks like a button, so Enter too.
els.photo.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault();
    els.photo.click();
  }
});
els.dropzone.addEventListener("dragover", (event) => {
  event.preventDefault();
  els.dropzone.classList.add("is-over");
});
els.dropzone.addEventListener("dragleave", () => els.dropzone.classList.remove("is-over"));
els.dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  els.dropzone.classList.remove("is-over");
  usePhoto(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) usePhoto(file);
});

els.textForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = els.text.value.trim();
  if (!text) return;
  query = { kind: "text", text };
  run();
});

// ---- filters re-run the current query ------------------------------------------------------

els.filterForm.addEventListener("submit", (event) => {
  event.preventDefault();
  if (query) run();
  else {
    els.sub.textContent = "Choose a photo first: the filters apply to its results.";
    els.photo.focus();
  }
});
function countFilters() {
  const f = filters();
  const active = (f.category.length ? 1 : 0) + (f.min_price !== undefined || f.max_price !== undefined ? 1 : 0)
    + (f.in_stock ? 1 : 0);
  els.filterCount.textContent = active ? `${active} on` : "";
}

els.filterForm.addEventListener("input", countFilters);
els.filterForm.addEventListener("change", (event) => {
  countFilters();
  if (query && event.target !== els.minPrice && event.target !== els.maxPrice) run();
});
els.reset.addEventListener("click", () => {
  els.filterForm.reset();
  for (const box of els.categories.querySelectorAll("input")) box.checked = false;
  countFilters();
  if (query) run();
});
els.clear.addEventListener("click", () => {
  inFlight?.abort();
  query = null;
  clearGrid();
  hideError();
  els.meta.hidden = true;
  showEmpty(els.emptyStart);
  forgetPhoto();
  describeQuery();
  els.photo.focus();
});

// ---- queue strip and model -----------------------------------------------------------------

async function loadStatus() {
  try {
    const status = await api("/v1/status");
    for (const name of ["embedded", "pending", "failed"]) {
      els.queue.querySelector(`[data-count="${name}"]`).textContent = Number(status[name]).toLocaleString("en");
    }
    const age = status.oldest_pending_seconds;
    els.queueAge.hidden = !(age > 0);
    if (age > 0) els.queueAge.textContent = `oldest waiting ${formatAge(age)}`;
    els.queue.classList.remove("is-offline");
    els.queue.title = status.model ? `Embedding queue · model ${status.model}` : "Embedding queue";
    const text = Boolean(status.supports_text);
    els.textForm.hidden = !text;
    els.queryHeading.textContent = text ? "Search by photo or text" : "Search by photo";
  } catch (err) {
    els.queue.classList.add("is-offline");
    els.queue.title = `Queue unavailable: ${err.message}`;
  }
}

// ---- API key -------------------------------------------------------------------------------

function showKeyState() {
  const has = Boolean(apiKey());
  els.keyLabel.textContent = has ? "Key set" : "API key";
  els.keyButton.classList.toggle("has-key", has);
}

function askForKey(reason) {
  if (els.keyDialog.open) return;
  if (reason) els.keyHint.textContent = `${reason} The key is kept in this tab only and sent as the X-API-Key header.`;
  els.keyInput.value = apiKey();
  els.keyForget.hidden = !apiKey();
  els.keyDialog.showModal();
}

els.keyButton.addEventListener("click", () => askForKey(""));
els.keyForm.addEventListener("submit", () => {
  const key = els.keyInput.value.trim();
  setApiKey(key);
  showKeyState();
  refresh();
});
els.keyCancel.addEventListener("click", () => els.keyDialog.close());
els.keyForget.addEventListener("click", () => {
  setApiKey("");
  els.keyInput.value = "";
  showKeyState();
  els.keyDialog.close();
});

// ---- start ---------------------------------------------------------------------------------

function refresh() {
  loadCategories();
  loadStatus();
  if (query) run();
}

// On a phone the filters start folded, so the photo and the results come first.
if (window.matchMedia("(max-width: 820px)").matches) els.filterBox.open = false;
showKeyState();
refresh();
setInterval(() => { if (!document.hidden) loadStatus(); }, STATUS_EVERY_MS);
