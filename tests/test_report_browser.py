"""report.html in a real browser: headless Chromium opens the page alone in an empty folder and checks that every
figure decodes, every table renders, and nothing refers to a file outside the page.

The page is written by itself into a fresh temporary folder (a relative reference to a sibling file would fail
there), with a script appended that, once the page has loaded, writes what it measured as JSON into a
<pre id="__check__">; ``chromium --headless --dump-dom`` prints the DOM and the JSON is read back from it.
Chromium is the Debian package ``chromium``: ``bash tests/setup_browser.sh`` (as root; ``make test`` runs it).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_report import make_sweep

from pipeline.results import report

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: install it with `bash tests/setup_browser.sh` (as root)")
TIMEOUT_S = 120

# Runs on window load (every image has loaded or failed by then): what the checks need, as JSON.  It runs
# synchronously: each image is decoded by drawing it onto a canvas, which throws for a broken one.  (Awaiting
# img.decode() instead let Chromium's virtual-time budget end first under load now and then, and --dump-dom
# then printed the page without the result.)
CHECK_JS = r"""
<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const drawn = imgs.map(im => {
    try { const c = document.createElement('canvas'); c.width = c.height = 1;
          c.getContext('2d').drawImage(im, 0, 0); return true; } catch (e) { return false; }
  });
  const label = el => {
    let e = el;
    while (e && e !== document.body) {
      let s = e.previousElementSibling;
      while (s) { if (/^H[1-6]$/.test(s.tagName)) return s.textContent.trim(); s = s.previousElementSibling; }
      e = e.parentElement;
    }
    return '';
  };
  const out = {title: document.title, images: [], tables: [], references: [], resources: [], error: null};
  try {
  imgs.forEach((im, i) => out.images.push({i, alt: im.alt, section: label(im), complete: im.complete && drawn[i],
    width: im.naturalWidth, height: im.naturalHeight, src: (im.getAttribute('src') || '').slice(0, 40)}));
  document.querySelectorAll('table').forEach((t, i) => {
    const rows = [...t.rows];
    const box = t.getBoundingClientRect();
    out.tables.push({i, section: label(t), header: rows.length ? rows[0].textContent.trim().slice(0, 60) : '',
      rows: rows.length, body_rows: t.tBodies.length ? [...t.tBodies].reduce((n, b) => n + b.rows.length, 0) : 0,
      flat_rows: rows.filter(r => r.getBoundingClientRect().height <= 0).length,
      width: box.width, height: box.height});
  });
  const attrs = ['src', 'href', 'srcset', 'poster', 'data', 'action', 'formaction', 'background', 'xlink:href'];
  document.querySelectorAll('*').forEach(el => {
    if (el.id === '__check_script__') return;
    for (const a of attrs) {
      const v = el.getAttribute(a);
      if (v !== null && !/^\s*data:/i.test(v) && !/^\s*#/.test(v))
        out.references.push({tag: el.tagName.toLowerCase(), attr: a, value: v.slice(0, 120)});
    }
    const st = el.getAttribute('style');
    for (const m of (st || '').matchAll(/url\(\s*['"]?([^'")]*)/gi))
      if (!/^data:/i.test(m[1])) out.references.push({tag: el.tagName.toLowerCase(), attr: 'style', value: m[1]});
  });
  for (const sheet of document.styleSheets) {
    let rules = [];
    try { rules = [...sheet.cssRules]; } catch (e) {  // a sheet from elsewhere (its <link> is listed above)
      const tag = sheet.ownerNode ? sheet.ownerNode.tagName.toLowerCase() : 'style';
      out.references.push({tag, attr: 'stylesheet', value: String(sheet.href)});
    }
    for (const rule of rules) {
      for (const m of rule.cssText.matchAll(/(?:url\(\s*['"]?|@import\s+['"])([^'")]*)/gi))
        if (!/^data:/i.test(m[1])) out.references.push({tag: 'style', attr: 'css', value: m[1]});
    }
  }
  out.resources = performance.getEntriesByType('resource').map(e => e.name).filter(n => !/^data:/i.test(n));
  // the first screen: the findings under "What was found" and the figure after them, in page coordinates
  const box = el => { if (!el) return null; const r = el.getBoundingClientRect();
    return {top: r.top + scrollY, bottom: r.bottom + scrollY, width: r.width, height: r.height}; };
  const found = [...document.querySelectorAll('h2')].find(h => h.textContent.trim() === 'What was found');
  let list = null, fig = null;
  for (let e = found ? found.nextElementSibling : null; e && e.tagName !== 'H2'; e = e.nextElementSibling) {
    if (e.tagName === 'UL' && !list) list = e;
    if (e.tagName === 'FIGURE' && !fig) fig = e.querySelector('img');
  }
  out.first_screen = {viewport: [innerWidth, innerHeight], heading: box(found),
    findings: list ? [...list.children].map(li => li.textContent.trim()) : [], findings_box: box(list),
    figure_alt: fig ? fig.alt : '', figure_box: box(fig)};
  } catch (e) { out.error = String(e && e.stack || e); }
  const pre = document.createElement('pre');
  pre.id = '__check__';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


SCREEN = (1400, 900)  # the window the first-screen check measures in: a laptop browser, px


def inspect(page: Path) -> dict:
    """Open ``page`` alone (copied into an empty folder) in headless Chromium, in a SCREEN-sized window; what
    CHECK_JS measured."""
    with tempfile.TemporaryDirectory(prefix="browser-check-") as tmp:
        tmp = Path(tmp)
        (tmp / "site").mkdir()
        checked = tmp / "site" / page.name  # the page's only file: a relative reference finds nothing
        text = page.read_text(encoding="utf-8")
        script = CHECK_JS.replace("<script>", "<script id='__check_script__'>", 1)
        at = text.rfind("</body>")
        checked.write_text(text[:at] + script + text[at:] if at >= 0 else text + script, encoding="utf-8")
        cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
               "--host-resolver-rules=MAP * ~NOTFOUND",  # a reference to the web fails fast, never leaves here
               f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
               f"--window-size={SCREEN[0]},{SCREEN[1]}",
               checked.as_uri()]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium did not finish within {TIMEOUT_S} s on {page.name}")
    m = re.search(r'<pre id="__check__">(.*?)</pre>', p.stdout, re.S)
    if not m:
        pytest.fail(f"chromium (exit {p.returncode}) produced no check result for {page.name}; "
                    f"stderr tail:\n{p.stderr[-2000:]}")
    return json.loads(html.unescape(m.group(1)))


def problems(res: dict) -> list[str]:
    """Everything wrong with a page, one line each, naming the image, table or reference."""
    out = [f"the check script failed: {res['error']}"] if res.get("error") else []
    for im in res["images"]:
        if not im["complete"] or im["width"] <= 0 or im["height"] <= 0:
            out.append(f"image {im['i']} ({im['alt'] or 'no alt'!r}, under {im['section']!r}, src {im['src']!r}…) "
                       f"does not decode: naturalWidth {im['width']}, naturalHeight {im['height']}")
    for t in res["tables"]:
        if t["body_rows"] == 0 or t["flat_rows"] or t["height"] <= 0 or t["width"] <= 0:
            out.append(f"table {t['i']} (under {t['section']!r}, header {t['header']!r}) does not render: "
                       f"{t['rows']} rows ({t['body_rows']} in the body), {t['flat_rows']} of zero height, "
                       f"box {t['width']:.0f} x {t['height']:.0f}")
    for r in res["references"]:
        out.append(f"<{r['tag']}> {r['attr']} refers outside the page: {r['value']!r}")
    for name in res["resources"]:
        out.append(f"the page requested a resource: {name}")
    return out


HOSTS = {name: {"model": f"embedded:{name}", "path": None, "fingerprint": None, "pooling": "mean",
                "build_info": {"steps": 30, "distance": {"base": "a", "relative_weight_change": d,
                                                        "mean_pooled_cosine": 1 - d, "linear_cka": 1 - d / 2,
                                                        "probe_accuracy_base": 0.74, "probe_accuracy_host": 0.74 - d,
                                                        "probe": "logistic regression, 700/500"}}}
         for name, d in (("a", 0.0), ("b", 0.08))}


@needs_chromium
def test_report_html_renders_in_chromium(tmp_path):
    """The richest synthetic report (every figure kind at the real resolution, predictions, head-only, hosts with
    distances); a few seconds, so not marked slow."""
    root = tmp_path / "sweep"
    make_sweep(root, conditions=("ported", "scratch", "sampled", "head-only"), preds="merged", new_columns=True,
               hosts=HOSTS)
    r = report.build(root, tmp_path / "rep", n_boot=300)
    assert {f.name for f in r.figures} >= {"forest.png", "bars_rt.png", "budget_rt.png", "heatmap_ported_minus_scratch.png",
                                           "drift_retention_vs_distance.png"}
    res = inspect(r.html)
    assert res["title"].startswith("PEFT portability report")
    assert len(res["images"]) == len(r.figures) and len(res["tables"]) >= 10, (len(res["images"]), len(res["tables"]))
    bad = problems(res)
    assert not bad, "report.html in Chromium:\n" + "\n".join(bad)


def first_screen_problems(res: dict) -> list[str]:
    """What keeps the report's first SCREEN[1] px from holding the finding sentences and the forest plot."""
    fs, out = res["first_screen"], []
    if fs["viewport"][0] != SCREEN[0]:
        out.append(f"the window is {fs['viewport'][0]} px wide, not {SCREEN[0]}: the check measured something else")
    if fs["heading"] is None:
        return out + ["no “What was found” heading"]
    if len(fs["findings"]) < 3:
        out.append(f"{len(fs['findings'])} finding sentence(s) under “What was found”, not 3: {fs['findings']}")
    if fs["findings_box"] and fs["findings_box"]["bottom"] > SCREEN[1]:
        out.append(f"the finding sentences end at {fs['findings_box']['bottom']:.0f} px, below the first {SCREEN[1]}")
    fig = fs["figure_box"]
    if fig is None or not fs["figure_alt"].startswith("Every paired comparison"):
        out.append(f"no forest plot under the findings (figure: {fs['figure_alt'][:60]!r})")
    elif fig["bottom"] > SCREEN[1]:
        out.append(f"the forest plot ends at {fig['bottom']:.0f} px, below the first {SCREEN[1]}")
    elif fig["height"] < 250 or fig["width"] < 0.7 * SCREEN[0]:
        out.append(f"the forest plot is drawn {fig['width']:.0f} x {fig['height']:.0f} px: too small to read")
    return out


@needs_chromium
def test_the_first_screen_holds_the_findings_and_the_forest_plot(tmp_path):
    """The demo's shape (four techniques, one host direction, four conditions, zero-shot and one budget, three
    seeds; figures at the real resolution): in a 1400 x 900 window the three finding sentences and the forest
    plot of every comparison lie within the first 900 px, the plot at a readable size."""
    root = tmp_path / "sweep"
    make_sweep(root, techniques=("lora", "bottleneck", "compacter", "prefix"), pairs=(("a", "b"),),
               conditions=("ported", "scratch", "sampled", "no-module"), regimes=(0, 10), preds="merged",
               new_columns=True, hosts=HOSTS)
    res = inspect(report.build(root, tmp_path / "rep", n_boot=300).html)
    bad = first_screen_problems(res)
    assert not bad, "the report's first screen:\n" + "\n".join(bad)
    found = res["first_screen"]["findings"]
    assert found[0].startswith("The modules learned") and found[1].startswith("At zero-shot, ported modules keep")
    assert found[2].startswith("With further training")


@needs_chromium
def test_the_first_screen_check_fails_a_report_that_leads_with_tables(tmp_path):
    """The same check on a page whose findings and plot come after a tall table: it names both."""
    dot = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    rows = "".join(f"<tr><td>{i}</td></tr>" for i in range(60))
    page = tmp_path / "late.html"
    page.write_text(f"<!doctype html><html><head><title>late</title></head><body><h1>r</h1><table><tbody>{rows}"
                    "</tbody></table><h2>What was found</h2><ul><li>a</li><li>b</li><li>c</li></ul><figure>"
                    f"<img alt='Every paired comparison' style='width:1200px;height:400px' "
                    f"src='data:image/png;base64,{dot}'></figure></body></html>")
    bad = "\n".join(first_screen_problems(inspect(page)))
    assert "the finding sentences end at" in bad and "the forest plot ends at" in bad, bad


@needs_chromium
def test_the_check_catches_broken_pages(tmp_path):
    """The same check on a hand-made page with a broken image, an image and a stylesheet in a sibling file, a
    web reference and an empty table: each is named; a clean page passes."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><head><title>bad</title><link rel='stylesheet' href='style.css'>"
        "<style>body{background:url(back.png)}</style></head><body>"
        "<h2>Figures</h2><img alt='corrupt' src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=='>"
        "<img alt='sibling' src='figures/none.png'>"
        "<img alt='web' src='https://example.invalid/x.png'>"
        "<h2>Tables</h2><table><thead><tr><th>a</th></tr></thead><tbody></tbody></table>"
        "<table style='display:none'><tbody><tr><td>hidden</td></tr></tbody></table>"
        "</body></html>")
    bad = problems(inspect(page))
    text = "\n".join(bad)
    for needle in ("'corrupt'", "'sibling'", "'web'", "refers outside the page: 'style.css'",
                   "refers outside the page: 'back.png'", "refers outside the page: 'figures/none.png'",
                   "refers outside the page: 'https://example.invalid/x.png'", "table 0 (under 'Tables'",
                   "table 1 (under 'Tables'", "the page requested a resource: https://example.invalid/x.png"):
        assert needle in text, f"{needle} not in:\n{text}"

    dot = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    good = tmp_path / "good.html"
    good.write_text(f"<!doctype html><html><head><title>good</title></head><body><h2>F</h2>"
                    f"<img alt='dot' src='data:image/png;base64,{dot}'><table><tbody><tr><td>1</td></tr></tbody>"
                    "</table></body></html>")
    res = inspect(good)
    assert problems(res) == [] and len(res["images"]) == 1 and res["images"][0]["width"] == 1
