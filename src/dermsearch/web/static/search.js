const $ = id => document.getElementById(id);
let current = null, facts = null, last = null;
// an indexed image's URLs: the id as a query parameter, so every id works ('.' and '..' included,
// which a browser drops from a path as dot segments even when percent-encoded)
const imageUrl = (id, size) => '/api/images?id=' + encodeURIComponent(id) + (size ? '&size=' + size : '');
const maskUrl = id => '/api/masks?id=' + encodeURIComponent(id);
const fmt = v => v === null || v === undefined ? '-' : v.toFixed(3);
fetch('/api/index').then(r => { if (r.status === 401) { location.href = '/login'; throw 0; } return r.json(); }).then(f => {
  facts = f;
  $('facts').textContent = f.images + ' images · ' + f.extractor.backbone;
  for (const d of Object.keys(f.diagnoses)) $('diagnosis').add(new Option(d + ' (' + f.diagnoses[d] + ')', d));
  for (const s of f.sites) $('site').add(new Option(s, s));
  for (const s of f.sexes) $('sex').add(new Option(s, s));
  $('patientbox').hidden = !f.has_patients;    // the switch exists only where patient ids do (default on)
});
function pick(file) {
  current = {file: file}; $('go').disabled = !file;
  $('qimg').src = URL.createObjectURL(file); $('qimg').hidden = false; $('qmask').hidden = true; search();
}
function pickId(id) {       // an indexed image as the query: its patient's other images can be hidden
  if (!id) return;
  current = {id: String(id)}; $('go').disabled = false; $('qid').value = current.id;
  $('qimg').src = imageUrl(current.id); $('qimg').hidden = false; $('qmask').hidden = true;
  search();
}
$('goid').onclick = () => pickId($('qid').value);
$('qid').onkeydown = e => { if (e.key === 'Enter') pickId($('qid').value); };
$('hidepatient').onchange = () => current && current.id && search();
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
  if (current.file) fd.append('file', current.file);
  else { fd.append('image_id', current.id); fd.append('hide_same_patient', $('hidepatient').checked ? 'true' : 'false'); }
  fd.append('k', $('k').value); fd.append('query_mask', 'png');
  for (const o of $('diagnosis').selectedOptions) fd.append('diagnosis', o.value);   // one field per value
  if ($('site').value) fd.append('site', $('site').value);
  if ($('sex').value) fd.append('sex', $('sex').value);
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
  const sp = body.same_patient, note = sp && facts && facts.has_patients ? ' · ' + String(sp.note) : '';
  $('status').textContent = body.candidates + ' candidates' + note + (body.messages ? ' · ' + body.messages.join(' ') : '');
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
      card.innerHTML = '<div class="thumb"><img loading="lazy" alt="">' +
        (facts && facts.has_masks ? '<img class="ov" alt="">' : '') + '</div>' +
        '<div>#' + h.rank + ' <b class="hid"></b></div><div class="dx"></div><div class="meta comp"></div>' +
        '<div><b>' + h.score.toFixed(4) + '</b></div><div class="comp">ES ' + fmt(c.euclidean) + ' · CS ' +
        fmt(c.cosine) + '<br>SS ' + fmt(c.style) + ' · DC ' + fmt(c.dice) + '</div>';
      card.querySelector('.thumb img').src = imageUrl(h.id);
      const ov = card.querySelector('img.ov'), ex = h.explain || {};
      if (ov) {
        const png = ex.overlap_png;   // query mask over the match's: green both, red query only, blue match only
        ov.src = (typeof png === 'string' && png.startsWith('data:image/png;base64,')) ? png : maskUrl(h.id);
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
      rights(card, h);
      const more = document.createElement('button'); more.className = 'more'; more.textContent = 'search with this image';
      more.onclick = () => pickId(h.id); card.appendChild(more);
      col.appendChild(card);
    }
    res.appendChild(col);
  }
}
function rights(card, h) {  // licence and attribution, as text only (never markup)
  for (const [cls, text] of [['lic', h.license ? 'licence: ' + String(h.license) : ''],
                             ['attr', h.attribution ? '\u00a9 ' + String(h.attribution) : '']]) {
    if (!text) continue;
    const d = document.createElement('div'); d.className = 'lic ' + cls; d.textContent = text; card.appendChild(d);
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
  $('cmp-q').src = $('qimg').src;
  $('cmp-qm').src = $('qmask').src || ''; $('cmp-qm').hidden = !$('qmask').src;
  $('cmp-m').src = imageUrl(h.id, 'full');
  $('cmp-mm').src = maskUrl(h.id);
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
fetch('/api/whoami').then(r => r.json()).then(w => {    // a signed-in user may end the session here
  if (!w.user) return;
  const a = $('signout'); a.hidden = false; a.textContent = 'sign out (' + String(w.user) + ')';
  a.onclick = async e => { e.preventDefault(); await fetch('/api/logout', {method: 'POST'}); location.href = '/login'; };
});
