async function signIn(token) {
  const r = await fetch('/api/login', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({token: token})});
  const body = await r.json();
  if (r.ok) { location.replace('/'); return; }
  document.getElementById('status').textContent = body.detail; document.getElementById('status').className = 'err';
}
document.getElementById('go').onclick = () => signIn(document.getElementById('token').value);
// the sign-in link 'dermsearch serve' prints carries the token in the fragment (never sent to a server):
// sign in with it once and drop it from the address bar and the history
function fromLink() {
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  if (token) { history.replaceState(null, '', '/login'); signIn(token); }
}
window.addEventListener('hashchange', fromLink);      // the link opened where this page already is
fromLink();
