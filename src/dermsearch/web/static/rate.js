let task = null;
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
  // licences and attributions of this page's images, sorted and tied to no item (blinding kept); text only
  const credits = (task.credits || []).map(c => [c.license ? 'licence: ' + String(c.license) : '',
    c.attribution ? '\u00a9 ' + String(c.attribution) : ''].filter(Boolean).join(', '));
  const cr = document.getElementById('credits');
  cr.textContent = credits.length ? 'Images on this page: ' + credits.join('; ') : ''; cr.hidden = !credits.length;
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
