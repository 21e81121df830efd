"""The two pages of the web app (plain HTML + JavaScript, no build step, no external assets).

The scripts are served as files (``/static/search.js``, ``/static/rate.js``), never inline, so the
Content-Security-Policy can forbid inline script; they build result markup from DOM nodes and
properties (``textContent``, ``src``), so no indexed data can become markup."""

_STYLE = """
:root{--b:#d0d5dd;--mel:#c0392b}
body{font-family:system-ui,sans-serif;margin:0;color:#1d2939;background:#f7f8fa}
header{background:#1d2939;color:#fff;padding:.7em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#9ecbff} main{padding:1em 1.2em}
#drop{border:2px dashed var(--b);border-radius:8px;padding:1em;background:#fff;display:flex;gap:1em;align-items:center}
#drop.over{border-color:#2e90fa;background:#eef6ff}
#controls{display:flex;flex-wrap:wrap;gap:.8em;margin:.8em 0;align-items:end}
#controls label{display:flex;flex-direction:column;font-size:.8em;gap:.2em}
#qimg{max-height:140px;border-radius:6px}
#results{display:flex;gap:.6em;overflow-x:auto;padding-bottom:1em}
.col{min-width:190px;background:#fff;border:1px solid var(--b);border-radius:8px;padding:.5em}
.col h3{font-size:.9em;margin:.2em 0} .mel-flag{font-size:.75em;margin-bottom:.4em}
.mel-flag.yes{color:var(--mel);font-weight:600}
.card{border-top:1px solid #eaecf0;padding:.4em 0;font-size:.75em}
.card.melanoma .dx{color:var(--mel);font-weight:600}
.thumb{position:relative;width:176px;height:132px}
.thumb img{width:176px;height:132px;object-fit:fill;border-radius:4px;display:block}
.thumb img.ov{position:absolute;left:0;top:0;display:none;image-rendering:pixelated}
body.overlay .thumb img.ov{display:block}
.comp{color:#475467} .err{color:var(--mel);font-weight:600}
.qbox{position:relative;display:inline-block;line-height:0} #qmask{position:absolute;left:0;top:0;width:100%;
 height:100%;border-radius:6px;image-rendering:pixelated} body:not(.overlay) #qmask{display:none}
#consensus{background:#fff;border:1px solid var(--b);border-radius:8px;padding:.5em .8em;margin:.5em 0}
#consensus.warn{border-color:var(--mel)} #export{margin:.4em 0}
.col h3 small{font-weight:400;color:#667085} .about{font-size:.72em;color:#475467;margin:0 0 .3em}
.card .thumb{cursor:zoom-in}
#compare{background:#fff;border:1px solid var(--b);border-radius:8px;padding:.6em;margin:.5em 0}
.cmp-row{display:flex;gap:1em;flex-wrap:wrap} .full{position:relative;display:inline-block}
.full img{max-width:min(45vw,600px);max-height:450px;display:block} .full img.ov{position:absolute;left:0;top:0;
 width:100%;height:100%;image-rendering:pixelated} #compare.nomask .full img.ov{display:none}
.bar{display:flex;height:8px;width:176px;background:#eaecf0;border-radius:2px;overflow:hidden;margin-top:.3em}
.bar span{display:block;height:100%} .why{color:#475467;font-size:.95em}
"""

INDEX_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>dermsearch</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>""" + _STYLE + """</style></head>
<body><header><b>dermsearch</b><span id="facts"></span><a href="/rate">rate results</a><a href="/docs">API</a></header>
<main>
<div id="drop"><div class="qbox"><img id="qimg" alt="" hidden><img id="qmask" class="ov" alt=""
 title="the query's lesion mask" hidden></div><div>Drop a dermoscopic image here, or
<input type="file" id="file" accept="image/*"></div></div>
<div id="controls">
 <label>k <input id="k" type="number" min="1" max="50" value="5" style="width:4em"></label>
 <label>diagnosis <select id="diagnosis" multiple size="3"></select></label>
 <label>site <select id="site"><option value="">any</option></select></label>
 <label>sex <select id="sex"><option value="">any</option></select></label>
 <label>age from <input id="age_min" type="number" style="width:5em"></label>
 <label>age to <input id="age_max" type="number" style="width:5em"></label>
 <label><span>&nbsp;</span><button id="go" disabled>Search</button></label>
 <label><span>&nbsp;</span><span><input type="checkbox" id="overlay"> overlay lesion masks</span></label>
</div>
<div id="status"></div>
<div id="consensus" hidden></div>
<div id="export" hidden><button id="dljson">Download results (JSON)</button>
 <button id="dlsheet">Download contact sheet (HTML)</button></div>
<div id="compare" hidden><div class="cmp-head"><b>Side by side</b> <span id="cmp-title"></span>
 <label><input type="checkbox" id="cmp-masks" checked> lesion masks</label> <button id="cmp-close">Close</button></div>
 <div class="cmp-row"><figure><div class="full"><img id="cmp-q" alt="query"><img id="cmp-qm" class="ov" alt=""></div>
 <figcaption>query</figcaption></figure><figure><div class="full"><img id="cmp-m" alt="match">
 <img id="cmp-mm" class="ov" alt=""></div><figcaption id="cmp-cap"></figcaption></figure></div></div>
<div id="results"></div>
</main>
<script src="/static/search.js" defer></script></body></html>"""

RATE_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>dermsearch · rating</title>
<style>""" + _STYLE + """
.grid{display:flex;flex-wrap:wrap;gap:.6em}.item{background:#fff;border:1px solid var(--b);border-radius:8px;padding:.4em}
.item.sel{border-color:#12b76a;box-shadow:0 0 0 2px #12b76a}.item img{width:200px;height:150px;object-fit:cover}
</style></head><body><header><b>dermsearch</b><span>blinded rating</span><a href="/">search</a>
</header><main>
<p>Tick every image similar to the query (colour, spread density and texture first; then shape, size, unique
features, background, location). Which measure found an image is hidden. Rater:
<input id="rater" placeholder="your initials" size="8"></p>
<div class="grid"><div class="item"><b>query</b><br><img id="query" alt="query"></div></div>
<h3>Retrieved images</h3><div class="grid" id="items"></div>
<p><button id="save">Save ratings and next query</button> <span id="status"></span></p>
</main><script src="/static/rate.js" defer></script></body></html>"""

SEARCH_JS = r"""const $ = id => document.getElementById(id);
let current = null, facts = null, last = null;
const fmt = v => v === null || v === undefined ? '-' : v.toFixed(3);
fetch('/api/index').then(r => { if (r.status === 401) { location.href = '/login'; throw 0; } return r.json(); }).then(f => {
  facts = f;
  $('facts').textContent = f.images + ' images · ' + f.extractor.backbone;
  for (const d of Object.keys(f.diagnoses)) $('diagnosis').add(new Option(d + ' (' + f.diagnoses[d] + ')', d));
  for (const s of f.sites) $('site').add(new Option(s, s));
  for (const s of f.sexes) $('sex').add(new Option(s, s));
});
function pick(file) {
  current = file; $('go').disabled = !file;
  $('qimg').src = URL.createObjectURL(file); $('qimg').hidden = false; search();
}
$('file').onchange = e => e.target.files[0] && pick(e.target.files[0]);
const drop = $('drop');
drop.ondragover = e => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = e => { e.preventDefault(); drop.classList.remove('over'); if (e.dataTransfer.files[0]) pick(e.dataTransfer.files[0]); };
$('go').onclick = search;
$('overlay').onchange = e => document.body.classList.toggle('overlay', e.target.checked);
const STAGE = ['#98a2b3', '#7a5af8', '#2e90fa', '#06aed4', '#12b76a', '#f79009', '#d92d20'];
function styleBar(st) {     // each stored Gram's share of the style loss (numbers only, built with the DOM)
  const wrap = document.createElement('div'), bar = document.createElement('div');
  bar.className = 'bar'; bar.title = 'share of the style loss per layer';
  let top = null;
  for (const e of st.layers) {
    const share = Number(e.share) || 0;
    if (!top || share > top.share) top = {share: share, stage: Number(e.stage), region: String(e.region)};
    if (share <= 0) continue;
    const s = document.createElement('span');
    s.style.width = (100 * share).toFixed(2) + '%';
    s.style.background = STAGE[(Number(e.stage) - 1) % STAGE.length];
    if (e.region === 'skin') s.style.opacity = '0.45';
    s.title = 'stage ' + Number(e.stage) + ' ' + String(e.region) + ': ' + (100 * share).toFixed(1) + '% of LS';
    bar.appendChild(s);
  }
  const t = document.createElement('div'); t.className = 'why';
  t.textContent = top ? 'style: most from stage ' + top.stage + ' ' + top.region + ' (' +
    Math.round(100 * top.share) + '%)' : '';
  wrap.appendChild(bar); wrap.appendChild(t);
  return wrap;
}
async function search() {
  if (!current) return;
  const fd = new FormData();
  fd.append('file', current); fd.append('k', $('k').value); fd.append('query_mask', 'png');
  fd.append('diagnosis', [...$('diagnosis').selectedOptions].map(o => o.value).join(','));
  fd.append('site', $('site').value); fd.append('sex', $('sex').value);
  if ($('age_min').value) fd.append('age_min', $('age_min').value);
  if ($('age_max').value) fd.append('age_max', $('age_max').value);
  $('status').textContent = 'searching…'; $('status').className = '';
  const r = await fetch('/api/search', {method: 'POST', body: fd});
  const body = await r.json();
  if (!r.ok) { $('status').textContent = body.detail; $('status').className = 'err'; $('results').innerHTML = ''; return; }
  last = {body: body, form: fd};
  const res = $('results'); res.innerHTML = ''; $('compare').hidden = true;
  if (!body.candidates) {
    $('status').textContent = 'No indexed image matches these filters: widen or clear them (diagnosis, site, sex, age).';
    $('status').className = 'err'; $('consensus').hidden = true; $('export').hidden = true; return;
  }
  $('status').textContent = body.candidates + ' candidates' + (body.messages ? ' · ' + body.messages.join(' ') : '');
  if (typeof body.query_mask_png === 'string' && body.query_mask_png.startsWith('data:image/png;base64,')) {
    $('qmask').src = body.query_mask_png; $('qmask').hidden = false;
  }
  consensus(body); $('export').hidden = false;
  for (const [m, hits] of Object.entries(body.results)) {
    const col = document.createElement('div'); col.className = 'col'; col.dataset.measure = m;
    const mel = body.melanoma_in_top_k[m];
    col.innerHTML = '<h3></h3><p class="about"></p><div class="mel-flag ' + (mel ? 'yes' : 'no') + '">melanoma in top ' +
      hits.length + ': ' + (mel ? 'yes (' + mel + ')' : 'no') + '</div>';
    const info = (facts && facts.measure_info && facts.measure_info[m]) || {name: m, about: ''};
    col.querySelector('h3').append(String(info.name) + ' ', Object.assign(document.createElement('small'),
      {textContent: m}));
    col.querySelector('.about').textContent = String(info.about);
    for (const h of hits) {
      const c = h.components, card = document.createElement('div');
      card.className = 'card' + (h.melanoma === 1 ? ' melanoma' : '');
      const id = encodeURIComponent(h.id);
      card.innerHTML = '<div class="thumb"><img loading="lazy" src="/api/images/' + id + '" alt="">' +
        (facts && facts.has_masks ? '<img class="ov" alt="">' : '') + '</div>' +
        '<div>#' + h.rank + ' <b class="hid"></b></div><div class="dx"></div><div class="meta comp"></div>' +
        '<div><b>' + h.score.toFixed(4) + '</b></div><div class="comp">ES ' + fmt(c.euclidean) + ' · CS ' +
        fmt(c.cosine) + '<br>SS ' + fmt(c.style) + ' · DC ' + fmt(c.dice) + '</div>';
      const ov = card.querySelector('img.ov'), ex = h.explain || {};
      if (ov) {
        const png = ex.overlap_png;   // query mask over the match's: green both, red query only, blue match only
        ov.src = (typeof png === 'string' && png.startsWith('data:image/png;base64,')) ? png : '/api/masks/' + id;
        ov.title = png ? 'green: both masks · red: query only · blue: match only' : 'lesion mask';
      }
      if (ex.style) card.appendChild(styleBar(ex.style));
      if (ex.mask) {
        const w = document.createElement('div'); w.className = 'why';
        w.textContent = 'masks overlap ' + ex.mask.overlap + ' px · Dice ' + fmt(ex.mask.dice);
        card.appendChild(w);
      }
      card.querySelector('.hid').textContent = h.id;
      card.querySelector('.thumb').onclick = () => compare(h, m);
      card.querySelector('.dx').textContent = (h.diagnosis || '-') + (h.lesion_id ? ' · ' + h.lesion_id : '');
      card.querySelector('.meta').textContent = Object.entries(h.meta || {}).map(([k, v]) => k + ' ' + v).join(' · ');
      col.appendChild(card);
    }
    res.appendChild(col);
  }
}
function consensus(body) {   // how many of the measures put a melanoma in their top k, and which
  const ms = Object.keys(body.melanoma_in_top_k), yes = ms.filter(m => body.melanoma_in_top_k[m] > 0);
  const box = $('consensus'); box.hidden = false; box.className = yes.length ? 'warn' : '';
  const name = m => (facts && facts.measure_info && facts.measure_info[m] ? facts.measure_info[m].name : m);
  box.textContent = yes.length
    ? 'Melanoma among the top ' + body.k_shown + ' of ' + yes.length + ' of ' + ms.length + ' measures: ' +
      yes.map(m => name(m) + ' (' + body.melanoma_in_top_k[m] + ')').join(', ') + '.'
    : 'No melanoma among the top ' + body.k_shown + ' of any of the ' + ms.length + ' measures.';
}
function compare(h, m) {
  const id = encodeURIComponent(h.id);
  $('cmp-q').src = $('qimg').src;
  $('cmp-qm').src = $('qmask').src || ''; $('cmp-qm').hidden = !$('qmask').src;
  $('cmp-m').src = '/api/images/' + id + '?size=full';
  $('cmp-mm').src = '/api/masks/' + id;
  $('cmp-title').textContent = h.id + ' · ' + (h.diagnosis || '-') + ' · found by ' + m;
  $('cmp-cap').textContent = h.id + ' (' + (h.diagnosis || '-') + '), score ' + h.score.toFixed(4);
  $('compare').hidden = false; $('compare').scrollIntoView({behavior: 'smooth'});
}
$('cmp-close').onclick = () => { $('compare').hidden = true; };
$('cmp-masks').onchange = e => $('compare').classList.toggle('nomask', !e.target.checked);
function download(blob, name) {
  const a = document.createElement('a'); a.href = URL.createObjectURL(blob); a.download = name; a.click();
}
$('dljson').onclick = () => last && download(new Blob([JSON.stringify(last.body, null, 1)],
  {type: 'application/json'}), 'dermsearch-search.json');
$('dlsheet').onclick = async () => {
  if (!last) return;
  const fd = new FormData();
  for (const [key, v] of last.form.entries()) if (key !== 'query_mask') fd.append(key, v);
  fd.append('format', 'html');
  const r = await fetch('/api/search', {method: 'POST', body: fd});
  if (r.ok) download(await r.blob(), 'dermsearch-search.html');
};
"""

RATE_JS = r"""let task = null;
async function next() {
  const r = await fetch('/api/ratings/session', {method: 'POST'});
  if (r.status === 401) { location.href = '/login'; return; }
  task = await r.json();
  document.getElementById('query').src = task.query_image;
  const box = document.getElementById('items'); box.innerHTML = '';
  for (const it of task.items) {      // DOM nodes and properties only: no data ever becomes markup
    const d = document.createElement('label'); d.className = 'item'; d.dataset.item = String(it.item);
    const img = document.createElement('img'); img.alt = ''; img.src = String(it.image);
    const box2 = document.createElement('input'); box2.type = 'checkbox';
    box2.onchange = e => d.classList.toggle('sel', e.target.checked);
    d.append(img, document.createElement('br'), box2, document.createTextNode(' similar (' + it.item + ')'));
    box.appendChild(d);
  }
}
document.getElementById('save').onclick = async () => {
  const ratings = [...document.querySelectorAll('#items .item')].map(d => ({item: d.dataset.item,
    similar: d.querySelector('input').checked}));
  const r = await fetch('/api/ratings', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({session: task.session, query_id: task.query_id, ratings,
                          rater: document.getElementById('rater').value})});
  const body = await r.json();
  document.getElementById('status').textContent = r.ok ? 'saved ' + body.stored + ' ratings' : body.detail;
  if (r.ok) next();
};
next();
"""

LOGIN_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>dermsearch · sign in</title>
<style>""" + _STYLE + """</style></head><body><header><b>dermsearch</b><span>sign in</span></header><main>
<p>This server needs an API token (ask its administrator; created with <code>dermsearch token create</code>).</p>
<p><input id="token" type="password" size="50" autocomplete="off" placeholder="API token">
<button id="go">Sign in</button> <span id="status"></span></p>
</main><script src="/static/login.js" defer></script></body></html>"""

LOGIN_JS = r"""document.getElementById('go').onclick = async () => {
  const r = await fetch('/api/login', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({token: document.getElementById('token').value})});
  const body = await r.json();
  if (r.ok) { location.href = '/'; return; }
  document.getElementById('status').textContent = body.detail; document.getElementById('status').className = 'err';
};
"""
