"""A self-contained HTML page to look inside a model: no network, inline CSS, JS and SVG.

The page shows a text coloured by one unit's activation (layer, kind and unit
selectable, also from the URL: page.html#layer=1&kind=cell&unit=17), the top
next-character predictions on hover, a unit list ranked by text features, the
gate saturation scatter (Karpathy, Johnson & Fei-Fei 2015) and the run's
learning curves. Activations are stored as int8 with one scale per (kind,
layer) block, base64-encoded, so a page is about 1.4 bytes per value. Gates
and hidden values are coloured on [-1, 1], cell values on +-(90th percentile of
|value|) of the shown unit, as in the terminal.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.curves import Curves
from charrnn.errors import CharRNNError
from charrnn.neurons.activations import BOUNDED_KINDS
from charrnn.neurons.gradient_panel import gradients_html
from charrnn.neurons.gradients import GradientNorms
from charrnn.neurons.unitstats import UnitScore
from charrnn.rundir import GradHealth

# Diverging scale: blue for negative, white at 0, red for positive (ColorBrewer RdBu ends).
NEGATIVE = (33, 102, 172)
POSITIVE = (178, 24, 43)
LAYER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def diverging_rgb(t: float) -> tuple[int, int, int]:
    """t in [-1, 1] (clipped) -> an RGB colour: white at 0, blue at -1, red at +1."""
    t = max(-1.0, min(1.0, t))
    end = POSITIVE if t >= 0 else NEGATIVE
    a = abs(t)
    return tuple(round(255 + (e - 255) * a) for e in end)  # type: ignore[return-value]


@dataclass
class PageData:
    title: str
    text: str  # the coloured text, N characters
    num_layers: int
    kinds: dict[str, int]  # kind -> units per layer
    values: dict[str, np.ndarray]  # kind -> (L, N, U)
    top_chars: list[str] = field(default_factory=list)  # N strings of K predicted characters
    top_probs: np.ndarray | None = None  # (N, K) in [0, 1]
    rankings: dict[str, list[UnitScore]] = field(default_factory=dict)  # label -> best units
    gates: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # (L, U) each
    curves: Curves | None = None
    initial: tuple[int, str, int] = (0, "hidden", 0)  # layer, kind, unit shown first
    gradients: GradientNorms | None = None  # norms by lag over the text (charrnn gradients)
    grad_health: GradHealth | None = None  # training gradient norm and clipped steps
    grad_clip: float = 0.0  # the run's clip level, drawn over the training norm


def _encode_block(block: np.ndarray) -> dict[str, object]:
    """(N, U) float -> {'scale', 'data'}: int8 row-major, value = q / 127 * scale."""
    scale = float(np.abs(block).max()) if block.size else 0.0
    scale = scale if scale > 0 else 1.0
    q = np.clip(np.rint(block / scale * 127), -127, 127).astype(np.int8)
    return {"scale": round(scale, 6), "data": base64.b64encode(q.tobytes()).decode("ascii")}


def _payload(data: PageData) -> dict[str, object]:
    blocks = {
        f"{kind}/{layer}": _encode_block(np.ascontiguousarray(value[layer]))
        for kind, value in data.values.items()
        for layer in range(data.num_layers)
    }
    units = [
        {
            "label": label,
            "layer": s.layer,
            "kind": s.kind,
            "unit": s.unit,
            "value": round(s.value, 3),
        }
        for label, scores in data.rankings.items()
        for s in scores
    ]
    preds = None
    if data.top_probs is not None and data.top_chars:
        probs = np.clip(np.rint(data.top_probs * 255), 0, 255).astype(np.uint8)
        preds = {
            "chars": data.top_chars,
            "probs": base64.b64encode(probs.tobytes()).decode("ascii"),
            "k": int(probs.shape[1]),
        }
    layer, kind, unit = data.initial
    return {
        "text": data.text,
        "layers": data.num_layers,
        "kinds": data.kinds,
        "bounded": [k for k in data.kinds if k in BOUNDED_KINDS],
        "blocks": blocks,
        "units": units,
        "preds": preds,
        "initial": {"layer": layer, "kind": kind, "unit": unit},
        "negative": NEGATIVE,
        "positive": POSITIVE,
    }


def gate_scatter_svg(gates: dict[str, tuple[np.ndarray, np.ndarray]], size: int = 200) -> str:
    """One square panel per gate kind: x = fraction left-saturated, y = fraction right-saturated.

    One dot per unit, coloured by layer; clicking a dot selects that unit in the page.
    """
    if not gates:
        return "<p>This model kind has no gates.</p>"
    m = 28  # margin for axis labels
    panels = []
    for kind, (left, right) in gates.items():
        dots = []
        for layer in range(left.shape[0]):
            colour = LAYER_COLOURS[layer % len(LAYER_COLOURS)]
            for unit in range(left.shape[1]):
                x = m + left[layer, unit] * size
                y = m + (1 - right[layer, unit]) * size
                tip = f"layer {layer} {kind} {unit}: left {left[layer, unit]:.2f}, right {right[layer, unit]:.2f}"
                dots.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}" fill-opacity="0.6" '
                    f'data-l="{layer}" data-k="{kind}" data-u="{unit}"><title>{tip}</title></circle>'
                )
        w = size + 2 * m
        panels.append(
            f'<svg class="scatter" width="{w}" height="{w}" viewBox="0 0 {w} {w}">'
            f'<rect x="{m}" y="{m}" width="{size}" height="{size}" fill="#fff" stroke="#999"/>'
            f'<line x1="{m}" y1="{m}" x2="{m + size}" y2="{m + size}" stroke="#ccc" stroke-dasharray="3 3"/>'
            f'<text x="{m + size / 2}" y="{m - 10}" text-anchor="middle" font-weight="bold">{html.escape(kind)} gate</text>'
            f'<text x="{m + size / 2}" y="{w - 6}" text-anchor="middle" font-size="11">fraction left-saturated (&lt; 0.1)</text>'
            f'<text x="10" y="{m + size / 2}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 10 {m + size / 2})">fraction right-saturated (&gt; 0.9)</text>'
            + "".join(dots)
            + "</svg>"
        )
    layers = next(iter(gates.values()))[0].shape[0]
    legend = " ".join(
        f'<span style="color:{LAYER_COLOURS[i % len(LAYER_COLOURS)]}">● layer {i}</span>' for i in range(layers)
    )
    return "".join(panels) + f"<p>{legend}</p>"


def curves_svg(curves: Curves | None, width: int = 640, height: int = 240) -> str:
    """Train (thin) and validation (thick) loss against step as an inline SVG."""
    if curves is None or not (curves.train or curves.val):
        return "<p>No metrics.jsonl beside the checkpoint.</p>"
    points = curves.train + curves.val
    s0, s1 = min(p.step for p in points), max(p.step for p in points)
    l0, l1 = min(p.loss for p in points), max(p.loss for p in points)
    s1 = s1 if s1 > s0 else s0 + 1
    l1 = l1 if l1 > l0 else l0 + 1e-3
    m = 48

    def xy(step: int, loss: float) -> str:
        x = m + (step - s0) / (s1 - s0) * (width - 2 * m)
        y = m / 2 + (l1 - loss) / (l1 - l0) * (height - 1.5 * m)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg class="curves" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for i in range(5):
        loss = l0 + (l1 - l0) * i / 4
        y = xy(s0, loss).split(",")[1]
        parts.append(f'<line x1="{m}" x2="{width - m}" y1="{y}" y2="{y}" stroke="#eee"/>')
        parts.append(f'<text x="{m - 4}" y="{y}" font-size="11" text-anchor="end" dy="4">{loss:.3f}</text>')
    for series, colour, stroke in ((curves.train, "#8fb3d9", 1), (curves.val, "#d62728", 2.5)):
        if series:
            pts = " ".join(xy(p.step, p.loss) for p in series)
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="{stroke}"/>')
    base = height - m + 14
    parts.append(f'<text x="{m}" y="{base}" font-size="11">step {s0}</text>')
    parts.append(f'<text x="{width - m}" y="{base}" font-size="11" text-anchor="end">{s1}</text>')
    best = curves.best_val
    label = f" · best val {best.loss:.4f} nats/char at step {best.step}" if best else ""
    parts.append(
        f'<text x="{m}" y="{height - 6}" font-size="12"><tspan fill="#8fb3d9">— train</tspan>'
        f' <tspan fill="#d62728">— validation</tspan>{html.escape(label)}</text></svg>'
    )
    return "".join(parts)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:8px 16px;background:#333;color:#eee}
main{display:flex;gap:16px;padding:12px 16px;align-items:flex-start}
#left{flex:1;min-width:0} #side{width:320px;flex:none}
#controls{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin-bottom:8px}
#unit{width:5em}
#text{font:14px/1.7 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all;
 background:#fff;border:1px solid #ddd;padding:8px;max-height:60vh;overflow:auto}
#tip{position:fixed;display:none;background:#fff;border:1px solid #999;padding:6px 8px;
 font:12px ui-monospace,monospace;pointer-events:none;box-shadow:0 2px 6px #0003;z-index:10}
.bar{display:inline-block;height:8px;background:#69c;vertical-align:middle;margin-left:4px}
#units{list-style:none;padding:0;max-height:70vh;overflow:auto;font-size:13px}
#units li{cursor:pointer;padding:1px 4px} #units li:hover{background:#eef} #units li.sel{font-weight:bold}
#search{width:100%;box-sizing:border-box}
#grad{display:inline-block;width:160px;height:12px;vertical-align:middle;border:1px solid #999}
svg.scatter circle{cursor:pointer}
"""

_JS = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const chars = Array.from(D.text), N = chars.length;
const $ = id => document.getElementById(id);
function bytes(s){const b=atob(s),a=new Uint8Array(b.length);for(let i=0;i<b.length;i++)a[i]=b.charCodeAt(i);return a;}
const cache = {};
function block(kind, layer){const k=kind+'/'+layer;
  if(!cache[k]){const B=D.blocks[k];cache[k]={scale:B.scale,q:new Int8Array(bytes(B.data).buffer)};}
  return cache[k];}
const probs = D.preds ? bytes(D.preds.probs) : null;
const sel = {layer:D.initial.layer, kind:D.initial.kind, unit:D.initial.unit};
let vals = new Float32Array(N), range = 1;
function colour(t){t=Math.max(-1,Math.min(1,t));const e=t>=0?D.positive:D.negative,a=Math.abs(t);
  return 'rgb('+e.map(c=>Math.round(255+(c-255)*a)).join(',')+')';}
function shown(c){return c==='\n'?'\u21b5\n':c==='\t'?'\u2192':c;}
function named(c){return c==='\n'?'\\n':c==='\t'?'\\t':c===' '?'space':c;}
const spans=[];
for(let t=0;t<N;t++){const s=document.createElement('span');s.textContent=shown(chars[t]);s.dataset.t=t;spans.push(s);$('text').appendChild(s);}
for(let l=0;l<D.layers;l++){const o=document.createElement('option');o.value=l;o.textContent=l;$('layer').appendChild(o);}
for(const k in D.kinds){const o=document.createElement('option');o.value=k;o.textContent=k;$('kind').appendChild(o);}
function render(){
  const U=D.kinds[sel.kind];sel.unit=Math.max(0,Math.min(U-1,sel.unit|0));
  const b=block(sel.kind,sel.layer);let mx=0;
  for(let t=0;t<N;t++){vals[t]=b.q[t*U+sel.unit]/127*b.scale;mx=Math.max(mx,Math.abs(vals[t]));}
  const mag=Array.from(vals,Math.abs).sort((a,b)=>a-b);
  range=D.bounded.includes(sel.kind)?1:(mag[Math.floor(0.9*(N-1))]||mx||1);
  for(let t=0;t<N;t++){const a=vals[t]/range;spans[t].style.background=colour(a);spans[t].style.color=Math.abs(a)>0.6?'#fff':'#000';}
  $('layer').value=sel.layer;$('kind').value=sel.kind;$('unit').value=sel.unit;$('unit').max=U-1;
  $('lo').textContent=(-range).toFixed(2);$('hi').textContent='+'+range.toFixed(2);
  $('grad').style.background='linear-gradient(to right,'+colour(-1)+','+colour(0)+','+colour(1)+')';
  for(const li of $('units').children)li.classList.toggle('sel',+li.dataset.l===sel.layer&&li.dataset.k===sel.kind&&+li.dataset.u===sel.unit);
  history.replaceState(null,'','#layer='+sel.layer+'&kind='+sel.kind+'&unit='+sel.unit);
}
function select(l,k,u){if(k in D.kinds){sel.layer=Math.max(0,Math.min(D.layers-1,+l||0));sel.kind=k;sel.unit=+u||0;render();}}
function fromHash(){const p=new URLSearchParams(location.hash.slice(1));
  select(p.has('layer')?p.get('layer'):sel.layer,p.has('kind')&&p.get('kind') in D.kinds?p.get('kind'):sel.kind,
    p.has('unit')?p.get('unit'):sel.unit);}
$('layer').onchange=e=>select(e.target.value,sel.kind,sel.unit);
$('kind').onchange=e=>select(sel.layer,e.target.value,sel.unit);
$('unit').onchange=e=>select(sel.layer,sel.kind,e.target.value);
$('prev').onclick=()=>select(sel.layer,sel.kind,sel.unit-1);
$('next').onclick=()=>select(sel.layer,sel.kind,sel.unit+1);
for(const u of D.units){const li=document.createElement('li');
  li.textContent=u.label+' \u00b7 layer '+u.layer+' '+u.kind+' '+u.unit+' \u00b7 '+(u.value>=0?'+':'')+u.value.toFixed(3);
  li.dataset.l=u.layer;li.dataset.k=u.kind;li.dataset.u=u.unit;li.onclick=()=>select(u.layer,u.kind,u.unit);$('units').appendChild(li);}
$('search').oninput=e=>{const q=e.target.value.toLowerCase().split(/\s+/).filter(Boolean);
  for(const li of $('units').children)li.style.display=q.every(w=>li.textContent.toLowerCase().includes(w))?'':'none';};
$('search').onkeydown=e=>{if(e.key!=='Enter')return;const m=e.target.value.match(/^\s*(?:l(?:ayer)?\s*)?(\d+)\s+([a-z]+)\s+(\d+)\s*$/i);
  if(m)select(m[1],m[2].toLowerCase(),m[3]);};
document.querySelectorAll('circle[data-k]').forEach(c=>c.onclick=()=>select(c.dataset.l,c.dataset.k,c.dataset.u));
$('text').onmousemove=e=>{const s=e.target;if(!s.dataset||s.dataset.t===undefined){$('tip').style.display='none';return;}
  const t=+s.dataset.t;let h='pos '+t+' \u00b7 '+named(chars[t])+' \u00b7 '+vals[t].toFixed(3);
  if(probs){h+='<br>next:';const K=D.preds.k,pc=Array.from(D.preds.chars[t]);
    for(let i=0;i<K&&i<pc.length;i++){const p=probs[t*K+i]/255;
      h+='<br>'+named(pc[i]).replace(/&/g,'&amp;').replace(/</g,'&lt;')+' '+p.toFixed(2)+'<span class="bar" style="width:'+Math.round(p*80)+'px"></span>';}}
  const tip=$('tip');tip.innerHTML=h;tip.style.display='block';tip.style.left=(e.clientX+12)+'px';tip.style.top=(e.clientY+12)+'px';};
$('text').onmouseleave=()=>{$('tip').style.display='none';};
window.addEventListener('hashchange',fromHash);
fromHash();
"""


def render_page(data: PageData) -> str:
    """The whole HTML document as a string."""
    payload = json.dumps(_payload(data), ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("</", "<\\/")  # never close the <script> element early
    title = html.escape(data.title)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>charrnn · {title}</title>
<style>{_CSS}</style></head><body>
<header><b>charrnn</b> · {title}</header>
<main><div id="left">
<div id="controls">layer <select id="layer"></select> kind <select id="kind"></select>
unit <button id="prev">‹</button><input id="unit" type="number" min="0"><button id="next">›</button>
<span><span id="lo"></span> <span id="grad"></span> <span id="hi"></span></span></div>
<div id="text"></div>
<h3>Gate saturation</h3>{gate_scatter_svg(data.gates)}
<h3>Learning curves</h3>{curves_svg(data.curves)}
<h3>Gradients</h3>{gradients_html(data.gradients, data.grad_health, data.grad_clip)}
</div>
<div id="side"><h3>Units</h3>
<input id="search" placeholder="filter (quotes, cell, layer 1) or go: 1 cell 17">
<ul id="units"></ul></div></main>
<div id="tip"></div>
<script id="data" type="application/json">{payload}</script>
<script>{_JS}</script>
</body></html>
"""


def write_page(path: Path, data: PageData) -> None:
    """Write the page for `data` to `path` (UTF-8). Raises CharRNNError if it cannot."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_page(data), encoding="utf-8")
    except OSError as exc:
        raise CharRNNError(f"cannot write '{path}': {exc.strerror or exc}.")
