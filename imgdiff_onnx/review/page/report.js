"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const PAIRS = DATA.pairs, PAL = DATA.palette;
const colour = k => PAL[(k - 1) % PAL.length];
const esc = s => String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const reasonKey = p => p.status !== "ok" ? "error: the record could not be processed"
  : !p.reason ? "went through every gate"
  : p.reason.startsWith("pair similarity") ? "stopped by the image-pair similarity gate"
  : p.reason.startsWith("no object words") ? "no object words: the captions name no object that differs"
  : p.reason.split(":")[0];
const DEFAULTS = {status: "all", reason: "all", minboxes: "0", sort: "line", per: "25", page: "1"};

function state() {
  const s = Object.assign({}, DEFAULTS);
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    if (!part) continue;
    const [k, v] = part.split("=");
    if (k in s) s[k] = decodeURIComponent(v || "");
  }
  return s;
}
function setState(changes) {
  const s = Object.assign(state(), changes);
  location.hash = Object.keys(s).filter(k => s[k] !== DEFAULTS[k]).map(k => k + "=" + encodeURIComponent(s[k])).join("&");
}

function histogram(values, bins, lo, hi, title) {
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.max(0, Math.floor((v - lo) / (hi - lo) * bins)))]++;
  const max = Math.max(1, ...counts), W = 220, H = 70, bw = W / bins;
  let bars = counts.map((c, i) => `<rect x="${i * bw + 0.5}" y="${H - c / max * H}" width="${bw - 1}" height="${c / max * H}" fill="#546e7a"><title>${(lo + i * (hi - lo) / bins).toFixed(2)}: ${c}</title></rect>`).join("");
  return `<div><h2>${esc(title)}</h2><svg class="hist" width="${W}" height="${H + 14}">${bars}<text x="0" y="${H + 12}" font-size="10">${lo}</text><text x="${W - 14}" y="${H + 12}" font-size="10">${hi}</text></svg><div class="meta">${values.length} values</div></div>`;
}

function summary() {
  const byStatus = {}, byReason = {}, boxCounts = [], itm = [], sims = [];
  for (const p of PAIRS) {
    byStatus[p.status] = (byStatus[p.status] || 0) + 1;
    const r = reasonKey(p); byReason[r] = (byReason[r] || 0) + 1;
    if (p.status === "ok") boxCounts.push(p.boxes.length);
    for (const e of p.evidence) { itm.push(e.itm1, e.itm2); sims.push(e.crop_similarity); }
  }
  const rows = o => Object.entries(o).sort((a, b) => b[1] - a[1]).map(([k, v]) => `<tr><td>${esc(k)}</td><td class="num">${v}</td></tr>`).join("");
  const total = boxCounts.reduce((a, b) => a + b, 0);
  document.getElementById("summary").innerHTML =
    `<div><h2>pairs by status</h2><table id="by-status">${rows(byStatus)}<tr><th>all</th><th class="num">${PAIRS.length}</th></tr></table></div>` +
    `<div><h2>exit reasons</h2><table id="by-reason">${rows(byReason)}</table></div>` +
    `<div><h2>boxes</h2><table><tr><td>total</td><td class="num" id="total-boxes">${total}</td></tr><tr><td>pairs with boxes</td><td class="num">${boxCounts.filter(n => n > 0).length}</td></tr><tr><td>most in one pair</td><td class="num">${boxCounts.length ? Math.max(...boxCounts) : 0}</td></tr></table></div>` +
    histogram(boxCounts, 10, 0, Math.max(10, ...boxCounts), "boxes per pair") +
    histogram(itm, 10, 0, 1, "ITM probability of kept boxes") +
    histogram(sims, 10, -1, 1, "crop-pair similarity of kept boxes");
  const reasons = document.getElementById("f-reason");
  for (const r of Object.keys(byReason).sort()) reasons.insertAdjacentHTML("beforeend", `<option value="${esc(r)}">${esc(r)}</option>`);
}

function card(p) {
  let body = "";
  if (p.status !== "ok") {
    body = `<p class="err">error: ${esc(p.error)}</p>`;
  } else {
    if (p.img) {
      const s = p.scale, off = p.w + DATA.gap;
      let rects = "";
      p.boxes.forEach((b, i) => {
        const k = i + 1, x = (b[0] - b[2] / 2) * s, y = (b[1] - b[3] / 2) * s, w = b[2] * s, h = b[3] * s;
        for (const dx of [0, off]) {
          rects += `<g class="box" data-k="${k}"><rect x="${x + dx + 1}" y="${y + 1}" width="${Math.max(1, w - 2)}" height="${Math.max(1, h - 2)}" fill="none" stroke="${colour(k)}" stroke-width="2"/>` +
                   `<rect x="${x + dx}" y="${y}" width="${String(k).length * 7 + 6}" height="13" fill="${colour(k)}"/><text x="${x + dx + 3}" y="${y + 10}" font-size="11" font-weight="bold" fill="#000">${k}</text></g>`;
        }
      });
      body += `<button class="zoom" data-zoom="1">zoom</button><br><div class="pic"><img src="${p.img}" width="${2 * p.w + DATA.gap}" height="${p.h}" alt="pair ${esc(p.id)}"><svg width="${2 * p.w + DATA.gap}" height="${p.h}">${rects}</svg></div>`;
    } else if (p.picture_error) {
      body += `<p class="err">${esc(p.picture_error)}</p>`;
    }
    body += `<p class="meta">${esc(p.captions[0])} | ${esc(p.captions[1])}</p>`;
    body += `<p class="meta">object words: ${esc((p.objects[0] || []).join(", ") || "none")} | ${esc((p.objects[1] || []).join(", ") || "none")}; pair similarity ${p.similarity === null ? "-" : p.similarity.toFixed(4)}; ${p.boxes.length} of ${p.counts.candidates || 0} candidates kept</p>`;
    if (p.reason) body += `<p class="meta reason">stopped: ${esc(p.reason)}</p>`;
    else body += `<p class="meta gates">${esc(gateChain(p.counts))}</p>`;
    if (p.evidence.length) {
      body += `<table class="legend"><tr><th>#</th><th>found in</th><th>image 1 word</th><th class="num">ITM</th><th>image 2 word</th><th class="num">ITM</th><th class="num">crop similarity</th></tr>` +
        p.evidence.map((e, i) => `<tr data-k="${i + 1}"><td><span class="swatch" style="background:${colour(i + 1)}">${i + 1}</span></td><td>image ${e.source}</td><td>${esc(e.word1)}</td><td class="num">${e.itm1.toFixed(3)}</td><td>${esc(e.word2)}</td><td class="num">${e.itm2.toFixed(3)}</td><td class="num">${e.crop_similarity.toFixed(3)}</td></tr>`).join("") + `</table>`;
    }
  }
  return `<div class="card status-${esc(p.status)}" data-line="${p.n}" data-boxes="${p.boxes.length}"><h3>${esc(p.id)} <span class="meta">line ${p.n}, ${esc(p.status)}</span></h3>${body}</div>`;
}

function gateChain(c) {
  // the pair's own path through the gates, from its counts
  const steps = [["unique_windows", "crop windows"], ["after_crop_pair_gate", "after the crop-pair similarity gate"],
                 ["after_itm_image1", "after image-text matching on image 1"], ["after_itm_image2", "after image-text matching on image 2"],
                 ["kept", "kept after overlap removal"]];
  return steps.filter(([k]) => k in c).map(([k, what]) => `${c[k]} ${what}`).join(" → ");
}

function highlight(cardEl, k) {
  // box k of a card (on both pictures, and its legend row) stands out; the others dim. null: none
  cardEl.classList.toggle("focus", k !== null);
  for (const el of cardEl.querySelectorAll("[data-k]")) el.classList.toggle("hl", el.dataset.k === k);
}

function wireHighlights(cards) {
  const target = ev => [ev.target.closest(".card"), ev.target.closest("[data-k]")];
  cards.addEventListener("mouseover", ev => {
    const [c, t] = target(ev);
    if (c && !c.dataset.pinned) highlight(c, t ? t.dataset.k : null);
  });
  cards.addEventListener("mouseout", ev => {
    const [c] = target(ev);
    if (c && !c.dataset.pinned && !c.contains(ev.relatedTarget)) highlight(c, null);
  });
  cards.addEventListener("click", ev => {
    const [c, t] = target(ev);
    if (!c) return;
    if (ev.target.dataset.zoom) { c.querySelector(".pic").classList.toggle("zoomed"); return; }
    if (!t) return;
    if (c.dataset.pinned === t.dataset.k) { delete c.dataset.pinned; highlight(c, null); }
    else { c.dataset.pinned = t.dataset.k; highlight(c, t.dataset.k); }  // a click keeps the box highlighted
  });
}

function render() {
  const s = state();
  for (const k of ["status", "reason", "minboxes", "sort", "per"]) document.getElementById("f-" + k).value = s[k];
  const min = Number(s.minboxes) || 0;
  let rows = PAIRS.filter(p => (s.status === "all" || p.status === s.status) && (s.reason === "all" || reasonKey(p) === s.reason) && p.boxes.length >= min);
  if (s.sort === "boxes-desc") rows = rows.slice().sort((a, b) => b.boxes.length - a.boxes.length || a.n - b.n);
  if (s.sort === "boxes-asc") rows = rows.slice().sort((a, b) => a.boxes.length - b.boxes.length || a.n - b.n);
  const per = Number(s.per) || 25, pages = Math.max(1, Math.ceil(rows.length / per)), page = Math.min(pages, Math.max(1, Number(s.page) || 1));
  document.getElementById("cards").innerHTML = rows.slice((page - 1) * per, page * per).map(card).join("");
  document.getElementById("shown").textContent = `${rows.length} of ${PAIRS.length} pairs`;
  document.getElementById("pager").innerHTML = `<button id="prev" ${page <= 1 ? "disabled" : ""}>&lt;</button> page <b id="page">${page}</b> of <b id="pages">${pages}</b> <button id="next" ${page >= pages ? "disabled" : ""}>&gt;</button>`;
  document.getElementById("prev").onclick = () => setState({page: String(page - 1)});
  document.getElementById("next").onclick = () => setState({page: String(page + 1)});
}

summary();
for (const k of ["status", "reason", "minboxes", "sort", "per"]) {
  document.getElementById("f-" + k).addEventListener("change", ev => setState({[k]: ev.target.value, page: "1"}));
}
window.addEventListener("hashchange", render);
wireHighlights(document.getElementById("cards"));
render();
document.body.dataset.ready = "1";
