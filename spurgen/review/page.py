"""The one page of the review app: plain HTML, CSS and a little JavaScript, no build step.

Keys: 1-9 pick a choice of the current question (then move to the next), Enter submits, u or Backspace (outside
the note) undoes the last answer. The reviewer name is kept in the browser and in the URL (?reviewer=).
"""

from __future__ import annotations

import html

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:#fff;border-bottom:1px solid #ddd}
#bar{flex:1;height:10px;background:#e3e3e3;border-radius:5px;overflow:hidden}
#fill{height:100%;background:#2a7;width:0}
main{display:flex;gap:1.5em;padding:1em;flex-wrap:wrap;align-items:flex-start}
#img{width:min(55vw,512px);height:auto;max-height:85vh;object-fit:contain;border:1px solid #ccc;background:#fff}
#side{flex:1;min-width:280px}
.q{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em .8em;margin-bottom:.6em}
.q.cur{border-color:#2a7;box-shadow:0 0 0 2px #2a74}
.q button{margin:.2em;padding:.3em .8em;border:1px solid #999;border-radius:4px;background:#fafafa}
.q button.on{background:#2a7;color:#fff;border-color:#2a7}
.k{font-size:.75em;color:#777;margin-left:.2em}.on .k{color:#dfd}#keys{font-size:.8em;color:#666}
#info{font-size:.9em;color:#444;margin-bottom:.8em}.pred b{color:#b00}
#msg{min-height:1.4em;color:#b00}textarea{width:100%;height:4em}
"""

_JS = r"""
const P=new URLSearchParams(location.search), TOKEN=P.get('token')||'';
let reviewer=P.get('reviewer')||localStorage.getItem('spurgen_reviewer')||'', st=null, ans={}, cur=0, busy=false, nonce='';
const $=id=>document.getElementById(id);
function hdr(){const h={'Content-Type':'application/json'}; if(TOKEN) h['X-Review-Token']=TOKEN; return h;}
async function call(url,body){
  const r=await fetch(url,body===undefined?{headers:hdr()}:{method:'POST',headers:hdr(),body:JSON.stringify(body)});
  const d=await r.json().catch(()=>({error:'HTTP '+r.status}));
  if(!r.ok){const e=new Error(d.error||('HTTP '+r.status)); e.data=d; throw e;} return d;}
function esc(s){const d=document.createElement('div'); d.textContent=s==null?'':String(s); return d.innerHTML;}
function show(d){
  st=d; ans={}; cur=0; nonce=Date.now().toString(36)+Math.random().toString(36).slice(2); const p=d.progress; $('fill').style.width=(p.total?100*p.done/p.total:100)+'%';
  $('count').textContent=p.done+' / '+p.total;
  if(!d.image){$('img').style.display='none'; $('qs').innerHTML='<p>All done, thank you.</p>'; $('info').innerHTML=''; return;}
  const q=TOKEN?'?token='+encodeURIComponent(TOKEN):'';
  $('img').style.display=''; $('img').src=d.image.url+q; let info='';
  if(d.image.prompt) info+='<div><b>prompt</b>: '+esc(d.image.prompt)+'</div>';
  if(d.image.template) info+='<div><b>template</b>: '+esc(d.image.template)+'</div>';
  for(const c of (d.image.predictions||[])) info+='<div class="pred"><i>'+esc(c.classifier)+'</i>: '+
    c.top.map(t=>(t.target?'<b>':'')+esc(t.name)+' '+t.p.toFixed(2)+(t.target?'</b>':'')).join('; ')+'</div>';
  $('info').innerHTML=info; render();}
function render(){
  $('qs').innerHTML=st.questions.map((q,i)=>'<div class="q'+(i===cur?' cur':'')+'"><div>'+esc(q.text)+'</div>'+
    (q.choices? q.choices.map((c,j)=>'<button data-q="'+i+'" data-c="'+j+'" class="'+(ans[q.key]===c?'on':'')+'">'+
      esc(c)+'<span class="k">'+(j+1)+'</span></button>').join('')
     : '<textarea id="note_'+i+'">'+esc(ans[q.key]||'')+'</textarea>')+'</div>').join('')+
    '<button id="submit">Submit (Enter)</button> <button id="undo">Undo (u)</button>'+
    '<p id="keys">Keys: 1-9 choose an answer of the highlighted question, Enter submits, u undoes the last.</p>';
  document.querySelectorAll('.q button').forEach(b=>b.onclick=()=>pick(+b.dataset.q,+b.dataset.c));
  st.questions.forEach((q,i)=>{if(!q.choices){const t=$('note_'+i); t.oninput=()=>{ans[q.key]=t.value;};}});
  $('submit').onclick=submit; $('undo').onclick=undo;}
function pick(i,j){const q=st.questions[i]; ans[q.key]=q.choices[j]; cur=Math.min(i+1,st.questions.length-1); render();
  const nq=st.questions[cur]; if(!nq.choices) $('note_'+cur).focus();}
async function act(f){if(busy) return; busy=true; $('msg').textContent='';
  try{show(await f());}catch(e){if(e.data&&e.data.progress) show(e.data); $('msg').textContent=e.message;}
  finally{busy=false;}}
function submit(){if(!st||!st.image) return;  // one nonce per image shown: a retry after a lost reply is a no-op
  act(()=>call('/api/answer',{reviewer,image:st.image.id,answers:ans,nonce}));}
function undo(){act(()=>call('/api/undo',{reviewer}));}
function start(){reviewer=$('who').value.trim(); if(!reviewer){$('msg').textContent='enter your name first'; return;}
  localStorage.setItem('spurgen_reviewer',reviewer);
  act(()=>call('/api/state?reviewer='+encodeURIComponent(reviewer)));}
document.addEventListener('keydown',e=>{
  if(!st) {if(e.key==='Enter'&&e.target.id==='who') start(); return;}
  const inNote=e.target.tagName==='TEXTAREA';
  if(e.key==='Enter'&&!e.shiftKey){e.preventDefault(); submit(); return;}
  if(inNote) return;
  if(e.key==='u'||e.key==='Backspace'){e.preventDefault(); undo(); return;}
  const q=st.questions[cur], n=parseInt(e.key);
  if(q&&q.choices&&n>=1&&n<=q.choices.length){e.preventDefault(); pick(cur,n-1);}});
window.onload=()=>{$('who').value=reviewer; $('go').onclick=start; if(reviewer) start(); else $('who').focus();};
"""


def page_html(mode: str) -> str:
    """The page; everything it shows comes from /api/state."""
    title = "spurgen study" if mode == "study" else "spurgen review"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><header><b>{html.escape(title)}</b>"
        "<input id='who' placeholder='your name' maxlength='64'><button id='go'>Start</button>"
        "<div id='bar'><div id='fill'></div></div><span id='count'></span></header>"
        "<main><img id='img' alt='image under review'><div id='side'><div id='info'></div><div id='qs'>"
        "<p>Enter your name and press Start. Keys: 1-9 choose, Enter submits, u undoes.</p></div>"
        f"<div id='msg'></div></div></main><script>{_JS}</script></body></html>"
    )
