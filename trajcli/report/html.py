"""report.html: one self-contained page (images embedded as data URIs, no external resources)."""

from __future__ import annotations

import base64
import html

from trajcli import __version__

_MIME = {"png": "image/png", "svg": "image/svg+xml"}

EXPLAIN = {
    "maps": "Each trajectory map holds the cosine similarity between two checkpoints' vectors. <b>raw</b> compares "
            "the parameters θ<sub>k</sub> themselves (high for almost every run: weights move little relative to their "
            "norm); <b>displacement</b> compares θ<sub>k</sub> − θ<sub>ref</sub>, where the run has gone since the "
            "reference; <b>update</b> compares consecutive steps θ<sub>k+1</sub> − θ<sub>k</sub>. The mean directional "
            "similarity ω is the mean of the off-diagonal entries: high ω means the run keeps moving along one "
            "direction (redundancy), low ω that it keeps exploring new ones. Grey cells are undefined "
            "(identical checkpoints, frozen weights).",
    "path": "The trajectory in its top two principal directions (classical MDS of the checkpoints' Gram matrix, "
            "no N × P matrix is ever formed), and its lengths and bends: the norm of the weights, the distance "
            "from the reference, the angle of each step, and the turning angle between consecutive updates "
            "(near 180° means oscillation). Straightness is the end-to-end distance over the path length.",
    "layers": "The same measures per block and per role (attention Q, K, V and output, MLP, norms), in "
              "displacement mode: which parts of the network keep moving in one direction and which explore. "
              "Tensors outside the blocks that are no embedding, final norm or output head (a BERT pooler, a "
              "classifier) form the group “other”.",
    "qkv": "The query, key and value parts of every attention layer, split as the model's forward pass splits "
           "them, each with its own trajectory map. Heterogeneity is max(ω<sub>Q</sub>, ω<sub>K</sub>, ω<sub>V</sub>) "
           "− min(…); map distance is the mean RMS difference between the three maps. The middle third of the "
           "depth is shaded.",
    "dynamics": "For weights followed by a normalization only the direction matters; it moves on a sphere with "
                "effective learning rate η/‖w‖². From the angles between checkpoints, the measured norms and the "
                "learning rate the later half of the run is read as <b>convergence</b> (the angle per unit of "
                "effective step shrinks), <b>equilibrium</b> (it settles, the training loss no longer falls, and the "
                "weights stay near one direction), <b>divergence</b> (the checkpoints are mutually uncorrelated, or "
                "single steps turn the weights by ≥ 60°) or <b>undetermined</b>, with the reason. Verdicts are given "
                "to scale-invariant weights only; the rule and its evidence are in dynamics.json.",
    "curvature": "The model's loss on one fixed batch at every checkpoint, and its curvature: the largest Hessian "
                 "eigenvalue (sharpness, by Lanczos on Hessian-vector products) against 2/η, where gradient descent "
                 "stops being stable (the edge of stability); the Hessian trace (Hutchinson); and the curvature along "
                 "the run's own next step, u<sup>T</sup>Hu against finite differences of the loss — where they part, the "
                 "Hessian does not describe the loss over that step. The glass compares gradients at θ ± σz: the "
                 "mean squared jump E[((g⁺ + g⁻)/2 − g⁰)²] grows like σ<sup>4</sup> where the loss is smooth and like "
                 "σ<sup>1</sup> where gradient discontinuities (ReLU kinks) dominate; p is that exponent.",
    "pitfalls": "Log-spaced checkpoints (step 1, 2, 4 … 512) put many rows early in training, and ω is an average "
                "over pairs, so it weighs early training heavily; compare ω across runs only with the same "
                "checkpoint schedule. A trajectory map shows directions, not speed: read it with the path lengths.",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:24px;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;margin:.6em 0}td,th{padding:4px 12px;text-align:left;
border-bottom:1px solid #eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0;flex:1 1 460px}figure.wide{flex-basis:100%}figure img{max-width:100%;
border:1px solid #eee}figcaption{font-size:.85em;color:#555}.explain{color:#333;max-width:960px}
.warn{background:#fff6e5;border-left:4px solid #f0a020;padding:6px 10px;margin:4px 0;font-size:.9em}
.broken{color:#b00;font-weight:bold}footer{margin-top:2em;color:#777;font-size:.85em}
"""

# Marks each image that failed to load, and records on <body> how many loaded: a reader sees a broken
# figure at once, and a headless browser can check the page.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img'), ok = 0;
  imgs.forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { ok += 1; }
    else { var s = document.createElement('div'); s.className = 'broken'; s.textContent = 'image failed to load: ' + img.alt; img.after(s); }
  });
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-loaded', ok);
});
"""


def _img(data: bytes, fmt: str, alt: str, caption: str, wide: bool = False) -> str:
    uri = f"data:{_MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"
    cls = " class='wide'" if wide else ""
    return (f'<figure{cls}><img src="{uri}" alt="{html.escape(alt)}"><figcaption>{html.escape(caption)}</figcaption>'
            "</figure>")


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def build_page(title: str, source: str, headline: list[tuple[str, str, str]], sections: list[dict],
               warnings: list[str], files: list[str]) -> str:
    """sections: {"id", "title", "explain", "figures": [(bytes, fmt, alt, caption[, wide])], "table": html or None}."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(source)}</p>",
        "<h2 id='headline'>Headline</h2><table id='headline-table'>",
    ]
    for key, label, value in headline:
        parts.append(f"<tr data-key='{html.escape(key)}'><th>{html.escape(label)}</th><td class='num'>{html.escape(value)}</td></tr>")
    parts.append("</table>")
    for w in warnings:
        parts.append(f"<div class='warn'>{html.escape(w)}</div>")
    for section in sections:
        parts.append(f"<h2 id='{section['id']}'>{html.escape(section['title'])}</h2>")
        parts.append(f"<p class='explain'>{section['explain']}</p>")
        for sentence in section.get("findings", ()):  # computed from this run's numbers (or marked background)
            parts.append(f"<p class='finding'>{html.escape(sentence)}</p>")
        if section.get("table"):
            parts.append(section["table"])
        parts.append("<div class='figs'>")
        parts.extend(_img(*fig) for fig in section["figures"])
        parts.append("</div>")
    parts.append(f"<h2 id='pitfalls'>Reading it</h2><p class='explain'>{EXPLAIN['pitfalls']}</p>")
    listed = "".join(f"<li><code>{html.escape(f)}</code></li>" for f in files)
    parts.append(f"<footer>Written by trajcli {__version__}. Files beside this page:<ul>{listed}</ul></footer>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _table(headers: list[str], rows: list[list[str]], cell_class: str = "") -> str:
    """A plain HTML table; headers may hold markup, cells are already escaped."""
    attr = f" class='{cell_class}'" if cell_class else ""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td{attr}>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def regime_table(doc: dict) -> str:
    rows = [[html.escape(g["name"]), g["regime"]["verdict"] or "—", _fmt(g["regime"]["median_angle_deg"], ".3f") + "°",
             _fmt(g["regime"]["rate_change_factor"], ".3g"), _fmt(g["regime"]["norm_change_factor"], ".3g")]
            for g in doc["groups"] if g["kind"] != "tensor"]
    table = _table(["group", "regime", "median step angle", "angle/eff. step change", "norm change"], rows)
    if not doc["scale_invariant"]:
        table = ("<p>No scale-invariant weights were found (nor named with --scale-invariant): the regimes describe "
                 "weights followed by a normalization, so no group gets a verdict; the numbers are shown as "
                 "measured.</p>") + table
    return table


def qkv_table(doc: dict) -> str:
    from trajcli.analysis import layer_label

    rows = [[html.escape(layer_label(e)), f"{e['depth']:.2f}", _fmt(e["q"]["mds"], ".4f"), _fmt(e["k"]["mds"], ".4f"),
             _fmt(e["v"]["mds"], ".4f"), _fmt(e["heterogeneity"], ".4f"), _fmt(e["map_distance"], ".4f")]
            for e in doc["layers"]]
    headers = ["layer", "depth", "ω<sub>Q</sub>", "ω<sub>K</sub>", "ω<sub>V</sub>", "heterogeneity", "map distance"]
    return _table(headers, rows, "num")


def curvature_table(doc: dict) -> str:
    edges = doc["edge_of_stability"]
    rows = [[str(p["step"]), _fmt(p["loss"], ".4f"), _fmt(p["eigenvalues"][0] if p["eigenvalues"] else None, ".4g"),
             _fmt(edges["gd"]["values"][i], ".4g") if edges else "—", _fmt(p["trace"]["value"], ".4g"),
             _fmt(p["direction"]["u_h_u"] if p["direction"] else None, ".3g"), _fmt(p["glass"][0]["exponent"], ".2f")]
            for i, p in enumerate(doc["points"])]
    headers = ["step", "loss", "λ<sub>max</sub>", "2/η", "tr H", "u<sup>T</sup>Hu", "glass p"]
    return _table(headers, rows, "num")
