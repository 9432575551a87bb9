"""The page of ``mpcore report DIR`` (the command is in :mod:`mpcore.cli.report`): one self-contained HTML
page for an output folder of ``mpcore run``/``generate``.

One card per item (``NAME.json`` manifest, ``NAME.mp4`` video, ``NAME_compare.mp4`` baseline |
guided, ``NAME_trace.png``), sorted by name: the prompt, seed, guidance settings, the side-by-side video
(labelled with the manifest's guidance name), the trace plot and, with ``--eval eval.json`` (from
``mpcore eval``), the item's metric values. No guidance is named here: labels come from the manifests. A header gives the counts, the eval means and, when ``DIR/comparison`` (or
``--comparison``) holds the output of ``mpcore eval --compare``, its chart and table.

The page has inline CSS and a few lines of vanilla JS, no external resources; videos and images are
linked by paths relative to the page, so the folder can be moved or zipped with the report inside.
Missing pieces degrade to a note on the card. The page is written atomically.

For tests and scripts the page exposes its media state on ``<body>``: ``data-videos-total``,
``data-videos-loaded`` and ``data-videos-failed`` (counts of ``<video>`` elements that fired
``loadeddata`` / ``error``), and ``data-videos-ready="true"`` once every video has loaded a frame.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote


VIDEO_EXTS = (".mp4", ".webm", ".gif")
MANIFEST_KEY = "mpcore_manifest_version"
CONTAINS = ("an output folder of `mpcore run` or `mpcore generate`: per item a manifest NAME.json "
            "(with the video NAME.mp4 and optionally NAME_compare.mp4 and NAME_trace.png)")


class ReportError(Exception):
    """The folder cannot be reported on (e.g. it holds no manifest)."""


@dataclass
class Item:
    name: str
    manifest: dict[str, Any] | None = None
    manifest_path: Path | None = None
    video: Path | None = None
    compare: Path | None = None
    trace: Path | None = None
    notes: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None  # this item's entry of generate.json


# ---------------------------------------------------------------------------------------------------
# reading the folder


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _media(folder: Path, stem: str, recorded: Any = None) -> Path | None:
    """The file ``stem`` + a video extension in ``folder`` (preferring the manifest's recorded name)."""
    if isinstance(recorded, str) and recorded:
        candidate = folder / Path(recorded).name
        if candidate.exists():
            return candidate
    for ext in VIDEO_EXTS:
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    if (folder / stem).is_dir():  # PNG frame folder (--format frames)
        return folder / stem
    return None


def collect_items(folder: str | Path) -> tuple[list[Item], dict[str, Any] | None]:
    """The items of an output folder, sorted by name, and its ``generate.json`` (or None).

    Raises :class:`ReportError` if the folder holds no run manifest.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder; expected {CONTAINS}")
    items: dict[str, Item] = {}
    generate = None
    unreadable: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = _load_json(path)
        except (OSError, ValueError) as error:
            unreadable[path.stem] = f"{path.name} is not readable JSON ({error})"
            continue
        if path.name == "generate.json" and isinstance(data, dict) and "items" in data:
            generate = data
        elif isinstance(data, dict) and MANIFEST_KEY in data:
            items[path.stem] = Item(path.stem, manifest=data, manifest_path=path)
    if not items:
        raise ReportError(f"{folder} holds no mpcore run manifest; expected {CONTAINS}")

    # videos without a manifest (e.g. a run that crashed before writing it) and failed items
    for ext in VIDEO_EXTS:
        for path in folder.glob(f"*{ext}"):
            stem = path.stem
            if stem.endswith("_compare") or stem.startswith("."):
                continue
            items.setdefault(stem, Item(stem))
    statuses = {}
    if generate is not None:
        for entry in generate.get("items") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                statuses[entry["name"]] = entry
                if entry.get("status") == "failed":
                    items.setdefault(entry["name"], Item(entry["name"]))

    for name, item in items.items():
        outputs = (item.manifest or {}).get("outputs") or {}
        outputs = outputs if isinstance(outputs, dict) else {}
        item.status = statuses.get(name)
        item.video = _media(folder, name, outputs.get("video"))
        item.compare = _media(folder, f"{name}_compare", outputs.get("compare"))
        trace = folder / Path(outputs["trace_plot"]).name if isinstance(outputs.get("trace_plot"), str) else None
        if trace is None or not trace.is_file():
            trace = folder / f"{name}_trace.png"
        item.trace = trace if trace.is_file() else None
        if item.manifest is None:
            item.notes.append(unreadable.get(name) or f"no manifest ({name}.json): settings unknown")
        if item.video is None:
            item.notes.append(f"no video ({name}.mp4)")
        if item.status and item.status.get("status") == "failed":
            item.notes.append(f"generation failed: {item.status.get('error', 'no error recorded')}")
    return [items[name] for name in sorted(items)], generate


def match_eval(evaluation: dict[str, Any] | None, items: list[Item], folder: Path,
               eval_dir: Path | None = None) -> dict[str, str]:
    """Per item name, its key in the ``videos`` of an ``mpcore eval`` JSON: matched by the video's path,
    else by file name / stem (a stem found in several folders is resolved by the folder's name)."""
    if not evaluation or not isinstance(evaluation.get("videos"), dict):
        return {}
    videos = evaluation["videos"]
    by_path: dict[str, str] = {}
    by_stem: dict[str, list[str]] = {}
    for key in videos:
        candidates = [Path(key)]
        if eval_dir is not None and not Path(key).is_absolute():
            candidates.append(eval_dir / key)
        for candidate in candidates:
            try:
                by_path.setdefault(str(candidate.resolve()), key)
            except OSError:
                pass
        stem = Path(key.rstrip("/")).name
        for ext in VIDEO_EXTS:
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
        by_stem.setdefault(stem, []).append(key)
    found = {}
    for item in items:
        key = by_path.get(str(item.video.resolve())) if item.video is not None else None
        if key is None:
            keys = by_stem.get(item.name, [])
            if len(keys) > 1:
                keys = [k for k in keys if Path(k).parent.name == folder.name] or keys
            if len(keys) > 1:
                item.notes.append(f"eval: {len(keys)} videos named {item.name}; none chosen")
                continue
            key = keys[0] if keys else None
        if key is not None and isinstance(videos[key], dict):
            found[item.name] = key
    return found


# ---------------------------------------------------------------------------------------------------
# HTML


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A compact display of a JSON value."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v, digits)}" for k, v in value.items())
    return str(value)


def _href(path: Path, page_dir: Path) -> str:
    rel = os.path.relpath(path.resolve(), page_dir.resolve())
    return quote(Path(rel).as_posix())


def _metric_cell(name: str, value: Any, unavailable: dict[str, Any], errors: Any = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        error = errors.get(name) if isinstance(errors, dict) else None
        reason = error or unavailable.get(name) or "no value for this video"
        return f'<td class="na" data-metric="{esc(name)}" title="{esc(reason)}">unavailable</td>'
    return f'<td class="num" data-metric="{esc(name)}">{esc(fmt(value))}</td>'


def _title(name: str, titles: dict[str, str] | None) -> str:
    text = (titles or {}).get(name)
    return f' title="{esc(text)}"' if text else ""



def guidance_settings_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest's guidance settings as the run used them: the section its guidance's spec names (e.g.
    MotionPrompt's, with the step range resolved), else ``guidance_settings``; {} without guidance."""
    from mpcore import plugins

    registered = plugins.registry("guidance").get(str(manifest.get("guidance")))
    section = registered.spec.section if registered is not None else None
    settings = manifest.get(section) if section else None
    settings = settings if isinstance(settings, dict) else manifest.get("guidance_settings")
    return settings if isinstance(settings, dict) else {}


def guidance_label(manifest: dict[str, Any]) -> str:
    """What the page calls a manifest's guided video: its guidance's name (``--guidance``), else 'guided'."""
    name = manifest.get("guidance")
    return str(name) if isinstance(name, str) and name and name != "none" else "guided"


def _settings_rows(item: Item) -> list[tuple[str, str]]:
    m = item.manifest or {}
    rows: list[tuple[str, str]] = []
    get = lambda d, k: d.get(k) if isinstance(d, dict) else None  # noqa: E731
    backbone = m.get("backbone") or {}
    if backbone:
        rows.append(("backbone", f"{get(backbone, 'name')} / {get(backbone, 'model')}"))
    sampler = m.get("sampler") or {}
    if sampler:
        rows.append(("sampling", f"{get(sampler, 'frames')} frames, {get(sampler, 'height')}x{get(sampler, 'width')}, "
                                 f"{get(sampler, 'steps')} steps, cfg {fmt(get(sampler, 'cfg_scale'), 2)}"))
    guidance = m.get("guidance")
    if guidance is not None:
        rows.append(("guidance", str(guidance)))
    mp = guidance_settings_of(m)
    result = m.get("result") or {}
    if mp and guidance != "none":  # what the guidance's settings and its manifest have of these
        opt_range = get(mp, "opt_range") if get(mp, "opt_range") is not None else get(result, "opt_range")
        if opt_range is not None:
            rows.append(("opt_range", f"{fmt(opt_range)} of {get(sampler, 'steps')} steps"))
        if "lr" in mp or "iterations" in mp:
            optimizer = f" ({get(mp, 'optimizer')})" if get(mp, "optimizer") else ""
            rows.append(("lr / iterations", f"{fmt(get(mp, 'lr'))}{optimizer} / {fmt(get(mp, 'iterations'))}"))
        flow = m.get("flow") or {}
        flow_name = get(flow, "name") or get(mp, "flow_estimator")
        if flow_name:
            weights = get(flow, "weights")
            rows.append(("flow", f"{flow_name}" + (f" ({Path(str(weights)).name})" if weights else "")))
        disc = m.get("discriminator") or {}
        if disc:
            rows.append(("discriminator", str(get(disc, "source") or get(disc, "path") or get(disc, "name") or "–")))
    updates = m.get("guidance_updates")
    if isinstance(updates, dict) and "updates" in updates:
        rows.append(("guidance updates", f"{updates.get('updates')} updates, {updates.get('skipped', 0)} skipped"))
    if isinstance(result, dict) and result:
        if "final_cosine" in result:
            rows.append(("final cosine to init", fmt(result["final_cosine"], 3)))
        if "token_drift_l2" in result:
            rows.append(("token drift (L2)", fmt(result["token_drift_l2"], 3)))
        if result.get("skipped_updates") and not (isinstance(updates, dict) and "updates" in updates):
            rows.append(("skipped updates", str(result["skipped_updates"])))
    return rows


def _video_tag(path: Path, page_dir: Path, small: bool) -> str:
    cls = ' class="pixel"' if small else ""
    src = _href(path, page_dir)
    if path.is_dir():
        return f'<p class="note">frames in <a href="{src}/">{esc(path.name)}/</a> (PNG frame folder, no video)</p>'
    if path.suffix.lower() == ".gif":
        return f'<img{cls} src="{src}" alt="{esc(path.name)}">'
    return f'<video{cls} controls loop muted autoplay playsinline src="{src}"></video>'


def _card(item: Item, page_dir: Path, metrics: dict[str, Any] | None, metric_names: list[str],
          unavailable: dict[str, Any], errors: Any = None, titles: dict[str, str] | None = None) -> str:
    m = item.manifest or {}
    status = item.status or {}
    prompt = m.get("prompt", status.get("prompt"))
    seed = m.get("seed", status.get("seed"))
    category = (m.get("item") or {}).get("category") if isinstance(m.get("item"), dict) else status.get("category")
    sampler = m.get("sampler") if isinstance(m.get("sampler"), dict) else {}
    try:
        small = max(int(sampler.get("width") or 0), int(sampler.get("height") or 0)) <= 128
    except (TypeError, ValueError):
        small = False
    parts = [f'<section class="card" id="{esc(item.name)}" data-item="{esc(item.name)}">',
             f'<h2><a href="#{esc(item.name)}">{esc(item.name)}</a></h2>',
             f'<p class="prompt">{esc(prompt) if prompt is not None else "<i>prompt unknown</i>"}</p>',
             '<p class="meta">' + " · ".join(
                 x for x in [f"seed {esc(seed)}" if seed is not None else "",
                             f"category {esc(category)}" if category else ""] if x) + "</p>"]
    media = ['<div class="media">']
    guided = guidance_label(m)
    if item.compare is not None:
        media.append(f'<figure class="video">{_video_tag(item.compare, page_dir, small)}'
                     f'<figcaption>baseline | {esc(guided)} (same seed)</figcaption></figure>')
    elif item.video is not None:
        label = "baseline (no guidance)" if m.get("guidance") == "none" else "video (no side-by-side compare file)"
        media.append(f'<figure class="video">{_video_tag(item.video, page_dir, small)}'
                     f'<figcaption>{esc(label)}</figcaption></figure>')
    else:
        media.append('<p class="note">no video</p>')
    if item.trace is not None:
        media.append(f'<figure class="trace"><a href="{_href(item.trace, page_dir)}"><img loading="lazy" '
                     f'src="{_href(item.trace, page_dir)}" alt="trace plot of {esc(item.name)}"></a>'
                     f'<figcaption>{esc(guided)}: loss terms per step</figcaption></figure>')
    elif m.get("guidance") != "none":
        media.append('<p class="note">no trace plot</p>')
    media.append("</div>")
    parts.extend(media)
    details = ['<div class="details">']
    settings = _settings_rows(item)
    if settings:
        details.append('<table class="settings"><tbody>')
        details.extend(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>" for key, value in settings)
        details.append("</tbody></table>")
    if metric_names:
        details.append('<table class="metrics"><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>')
        for name in metric_names:
            if metrics is None:
                cell = '<td class="na" title="not in the eval JSON">–</td>'
            else:
                cell = _metric_cell(name, metrics.get(name), unavailable, errors)
            details.append(f"<tr><th{_title(name, titles)}>{esc(name)}</th>{cell}</tr>")
        details.append("</tbody></table>")
    details.append("</div>")
    parts.extend(details)
    files = [item.video, item.compare, item.manifest_path]
    links = [f'<a href="{_href(p, page_dir)}">{esc(p.name)}</a>' for p in files if p is not None]
    parts.append('<p class="files">' + " · ".join(links) + "</p>")
    for note in item.notes:
        parts.append(f'<p class="note">{esc(note)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _comparison_rows(data: Any) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """(metric rows, other top-level scalars) of a comparison JSON, whatever its exact layout.

    The extras include ``pairs`` as a count and ``unavailable`` ({metric: reason}) when present."""
    if not isinstance(data, (dict, list)):
        return [], {}
    container: Any = data
    extra: dict[str, Any] = {}
    if isinstance(data, dict):
        for key in ("metrics", "rows", "results", "comparison"):
            if isinstance(data.get(key), (dict, list)):
                container = data[key]
                break
        extra = {k: v for k, v in data.items() if not isinstance(v, (dict, list)) or
                 (isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v))}
        if isinstance(data.get("pairs"), list):
            extra["pairs"] = len(data["pairs"])
        if isinstance(data.get("unavailable"), dict) and data.get("unavailable") is not container:
            extra["unavailable"] = data["unavailable"]
    rows: list[tuple[str, dict[str, Any]]] = []
    if isinstance(container, dict):
        rows = [(str(k), v) for k, v in container.items() if isinstance(v, dict)]
    else:
        for row in container:
            if isinstance(row, dict):
                name = row.get("metric", row.get("name", f"row {len(rows) + 1}"))
                rows.append((str(name), {k: v for k, v in row.items() if k not in ("metric", "name")}))
    return rows, extra


def _comparison_section(folder: Path | None, page_dir: Path, guided: str = "guided") -> str:
    if folder is None:
        return ""
    parts = [f'<section class="comparison" id="comparison"><h2>Baseline vs {esc(guided)}</h2>']
    png, md, js = (folder / f"comparison.{ext}" for ext in ("png", "md", "json"))
    if png.is_file():
        parts.append(f'<img class="chart" src="{_href(png, page_dir)}" alt="comparison chart">')
    rendered = False
    if js.is_file():
        try:
            rows, extra = _comparison_rows(_load_json(js))
        except (OSError, ValueError) as error:
            rows, extra = [], {}
            parts.append(f'<p class="note">{esc(js.name)} is not readable JSON ({esc(error)})</p>')
        if rows:
            columns: list[str] = []
            for _, row in rows:
                columns.extend(k for k in row if k not in columns and k != "description")
            parts.append('<table class="cmp"><thead><tr><th>metric</th>'
                         + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr></thead><tbody>")
            for name, row in rows:
                cells = "".join(f'<td class="num" data-col="{esc(c)}">{esc(fmt(row.get(c)))}</td>' for c in columns)
                title = f' title="{esc(row["description"])}"' if row.get("description") else ""
                parts.append(f'<tr data-metric="{esc(name)}"><th{title}>{esc(name)}</th>{cells}</tr>')
            parts.append("</tbody></table>")
            rendered = True
        notes, unavailable = extra.pop("notes", None), extra.pop("unavailable", None)
        if extra:
            parts.append('<p class="meta">' + " · ".join(f"{esc(k)}: {esc(fmt(v))}" for k, v in extra.items()) + "</p>")
        for note in notes if isinstance(notes, list) else []:
            parts.append(f'<p class="meta">{esc(note)}</p>')
        for name, reason in (unavailable.items() if isinstance(unavailable, dict) else []):
            parts.append(f'<p class="note">{esc(name)} unavailable: {esc(fmt(reason))}</p>')
    if not rendered and md.is_file():
        parts.append(f"<pre>{esc(md.read_text(encoding='utf-8', errors='replace'))}</pre>")
    if not (png.is_file() or md.is_file() or js.is_file()):
        parts.append(f'<p class="note">{esc(folder)} holds no comparison.json / .md / .png '
                     "(written by `mpcore eval --compare`)</p>")
    files = [f'<a href="{_href(p, page_dir)}">{esc(p.name)}</a>' for p in (md, js, png) if p.is_file()]
    if files:
        parts.append('<p class="files">' + " · ".join(files) + "</p>")
    parts.append("</section>")
    return "\n".join(parts)


CSS = """
:root { --fg:#1d2125; --muted:#5f6b76; --line:#d9dee3; --bg:#f5f7f9; --card:#fff; --accent:#2a6fdb; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header, main { max-width:1200px; margin:0 auto; padding:16px 20px; }
h1 { margin:8px 0 4px; font-size:24px; } h2 { margin:0 0 6px; font-size:17px; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
.meta, figcaption, .files { color:var(--muted); font-size:13px; margin:4px 0; }
.note { color:#8a5a00; background:#fff6e0; border-left:3px solid #e0a800; padding:4px 8px; margin:6px 0; font-size:13px; }
.card, .comparison, .summary { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; margin:0 0 16px; }
.prompt { font-size:17px; margin:2px 0; }
.media { display:flex; flex-wrap:wrap; gap:16px; align-items:flex-start; margin:8px 0; }
figure { margin:0; } figure.video { flex:2 1 420px; } figure.trace { flex:1 1 300px; }
figure.video video, figure.video img { width:100%; height:auto; background:#000; border-radius:4px; display:block; }
figure.trace img, img.chart { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
.pixel { image-rendering: pixelated; }
.details { display:flex; flex-wrap:wrap; gap:16px; align-items:flex-start; }
table { border-collapse:collapse; font-size:13px; }
th, td { border-bottom:1px solid var(--line); padding:3px 10px 3px 0; text-align:left; vertical-align:top; }
td.num { font-variant-numeric: tabular-nums; text-align:right; }
td.na { color:var(--muted); font-style:italic; cursor:help; }
thead th { color:var(--muted); font-weight:600; }
pre { background:var(--bg); padding:8px; overflow:auto; }
nav.toc { font-size:13px; columns: 4 160px; }
"""

SCRIPT = """
(function () {
  var body = document.body, videos = Array.prototype.slice.call(document.querySelectorAll('video'));
  var loaded = 0, failed = 0;
  body.dataset.videosTotal = videos.length; body.dataset.videosLoaded = 0; body.dataset.videosFailed = 0;
  function update() {
    body.dataset.videosLoaded = loaded; body.dataset.videosFailed = failed;
    if (loaded === videos.length) body.dataset.videosReady = 'true';
  }
  videos.forEach(function (v) {
    var done = false;
    function ok() { if (!done && v.videoWidth > 0) { done = true; loaded++; v.dataset.loaded = v.videoWidth + 'x' + v.videoHeight; update(); } }
    function bad() { if (!done) { done = true; failed++; v.dataset.error = String(v.error && v.error.code); update(); } }
    v.addEventListener('loadeddata', ok); v.addEventListener('error', bad);
    if (v.readyState >= 2) ok(); else if (v.error) bad();
  });
  update();
  if ('IntersectionObserver' in window) {  // play only what is on screen: a big report stays light
    var seen = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { var p = e.target.play(); if (p && p.catch) p.catch(function () {}); } else e.target.pause(); });
    });
    videos.forEach(function (v) { seen.observe(v); });
  }
})();
"""


@dataclass
class _EvalView:
    """What the page shows of an ``mpcore eval`` JSON: per item its key in ``videos`` and its metric
    values, the errors by key, the metric names (in column order) with their hover titles, the
    metrics that could not be computed and the means."""

    keys: dict[str, str]
    per_item: dict[str, dict[str, Any]]
    errors: dict[str, Any]
    titles: dict[str, str]
    unavailable: dict[str, Any]
    mean: dict[str, Any]
    metric_names: list[str]


def _section(evaluation: dict[str, Any] | None, key: str) -> dict[str, Any]:
    """``evaluation[key]`` if it is a non-empty dict, else {} (a missing eval JSON or a malformed entry)."""
    section = (evaluation or {}).get(key) or {}
    return section if isinstance(section, dict) else {}


def _metric_titles(declared: dict[str, Any]) -> dict[str, str]:
    """Hover titles of the declared metrics: their description and whether VBench defines them."""
    titles = {}
    for name, info in declared.items():
        if isinstance(info, dict):
            vbench = info.get("vbench")
            titles[str(name)] = " ".join(x for x in [str(info.get("description") or ""), "(VBench definition)"
                                                     if vbench is True else "(not a VBench metric)"
                                                     if vbench is False else ""] if x)
    return titles


def _eval_view(evaluation: dict[str, Any] | None, items: list[Item], folder: Path,
               eval_dir: Path | None) -> _EvalView:
    """Match the eval JSON's videos to the items and gather what the page shows of it (see :class:`_EvalView`).
    The metric columns: the declared metrics, then any other the means, the items or the unavailable ones name."""
    keys = match_eval(evaluation, items, folder, eval_dir)
    videos = (evaluation or {}).get("videos") or {}
    per_item = {name: videos[key] for name, key in keys.items()}
    errors = _section(evaluation, "errors")
    declared = _section(evaluation, "metrics")
    titles = _metric_titles(declared)
    unavailable = _section(evaluation, "unavailable")
    mean = _section(evaluation, "mean")
    metric_names: list[str] = [str(k) for k in declared] + [k for k in mean if k not in declared]
    for values in per_item.values():
        metric_names.extend(k for k in values if k not in metric_names)
    metric_names.extend(k for k in unavailable if k not in metric_names)
    return _EvalView(keys, per_item, errors, titles, unavailable, mean, metric_names)


def _counts(items: list[Item], evaluation: dict[str, Any] | None, per_item: dict[str, Any],
            generate: dict[str, Any] | None) -> dict[str, Any]:
    """The header's counts: items, items with each piece, items with metrics (with an eval JSON) and
    generate.json's non-zero outcome counts."""
    counts = {
        "items": len(items),
        "with manifest": sum(i.manifest is not None for i in items),
        "with side-by-side video": sum(i.compare is not None for i in items),
        "with trace plot": sum(i.trace is not None for i in items),
    }
    if evaluation is not None:
        counts["with metrics"] = len(per_item)
    if generate is not None:
        summary = generate.get("summary") or {}
        for key in ("generated", "skipped", "failed", "pending"):
            if isinstance(summary, dict) and summary.get(key):
                counts[f"generate.json: {key}"] = summary[key]
    return counts


def _warnings(items: list[Item]) -> list[str]:
    """The items' manifest warnings, each once, in order of appearance."""
    warnings: list[str] = []
    for item in items:
        for warning in (item.manifest or {}).get("warnings") or []:
            if str(warning) not in warnings:
                warnings.append(str(warning))
    return warnings


def _means_table(view: _EvalView, folder: Path) -> list[str]:
    """The header's table of metric means over the eval JSON's videos, with notes on what is missing."""
    head = []
    if view.metric_names:
        head.append('<h2>Metrics (mean over the eval JSON\'s videos)</h2><table class="mean"><thead><tr>'
                    "<th>metric</th><th>mean</th></tr></thead><tbody>")
        for name in view.metric_names:
            head.append(f"<tr><th{_title(name, view.titles)}>{esc(name)}</th>"
                        f"{_metric_cell(name, view.mean.get(name), view.unavailable)}</tr>")
        head.append("</tbody></table>")
        for name, reason in view.unavailable.items():
            head.append(f'<p class="meta">{esc(name)} unavailable: {esc(fmt(reason))}</p>')
    else:
        head.append('<p class="note">the eval JSON has no metric values</p>')
    if not view.per_item:
        head.append(f'<p class="note">no video of the eval JSON matches an item of {esc(folder.name)}</p>')
    return head


def _header(title: str, folder: Path, eval_path: str | Path | None, counts: dict[str, Any], items: list[Item],
            generate: dict[str, Any] | None, evaluation: dict[str, Any] | None, view: _EvalView) -> list[str]:
    """The page's header: title, folder, counts, the generate settings, the warnings, the metric means
    (with an eval JSON) and, for several items, a table of contents."""
    head = [f'<header><h1>{esc(title)}</h1>',
            f'<p class="meta">folder {esc(folder.resolve())}'
            + (f" · eval {esc(eval_path)}" if eval_path else "") + "</p>"]
    head.append('<div class="summary"><table class="counts"><tbody>'
                + "".join(f"<tr><th>{esc(k)}</th><td class=\"num\">{esc(v)}</td></tr>" for k, v in counts.items())
                + "</tbody></table>")
    if generate is not None and isinstance(generate.get("settings"), dict):
        s = generate["settings"]
        bb = s.get("backbone") if isinstance(s.get("backbone"), dict) else {}
        sm = s.get("sampler") if isinstance(s.get("sampler"), dict) else {}
        head.append(f'<p class="meta">generate: {esc(bb.get("name"))} / {esc(bb.get("model"))}, guidance '
                    f'{esc(s.get("guidance"))}, {esc(sm.get("frames"))} frames {esc(sm.get("height"))}x'
                    f'{esc(sm.get("width"))}, {esc(sm.get("steps"))} steps</p>')
    for warning in _warnings(items):
        head.append(f'<p class="note">{esc(warning)}</p>')
    if evaluation is not None:
        head.extend(_means_table(view, folder))
    head.append("</div>")
    if len(items) > 1:
        head.append('<nav class="toc">' + "".join(f'<div><a href="#{esc(i.name)}">{esc(i.name)}</a></div>'
                                                 for i in items) + "</nav>")
    head.append("</header>")
    return head


def render(folder: str | Path, out: str | Path, evaluation: dict[str, Any] | None = None,
           comparison: str | Path | None = None, title: str | None = None,
           eval_path: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """The report's HTML for ``folder`` as it will be written to ``out``, and a summary dict."""
    folder = Path(folder)
    page_dir = Path(out).parent
    items, generate = collect_items(folder)
    eval_dir = Path(eval_path).parent if eval_path is not None else None
    view = _eval_view(evaluation, items, folder, eval_dir)
    title = title or f"mpcore report: {folder.resolve().name}"
    counts = _counts(items, evaluation, view.per_item, generate)
    head = _header(title, folder, eval_path, counts, items, generate, evaluation, view)

    guided = ", ".join(sorted({guidance_label(i.manifest) for i in items if i.manifest is not None
                                and i.manifest.get("guidance") != "none"})) or "guided"
    body = ["<main>", _comparison_section(Path(comparison) if comparison else None, page_dir, guided)]
    for item in items:
        body.append(_card(item, page_dir, view.per_item.get(item.name) if evaluation is not None else None,
                          view.metric_names, view.unavailable, view.errors.get(view.keys.get(item.name, "")),
                          view.titles))
    body.append("</main>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(head) + "\n" + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
    return page, {**counts, "metrics": view.metric_names}


def default_comparison(folder: Path) -> Path | None:
    """``DIR/comparison`` if it exists, else ``DIR/../comparison`` (where ``mpcore eval --compare`` writes
    by default) if its ``comparison.json`` pairs a video of ``DIR``."""
    if (folder / "comparison").is_dir():
        return folder / "comparison"
    candidate = folder.resolve().parent / "comparison" / "comparison.json"
    try:
        pairs = _load_json(candidate).get("pairs") or []
        here = folder.resolve()
        if any(Path(str(p)).resolve().parent == here for pair in pairs for p in pair):
            return candidate.parent
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return None


def write_report(folder: str | Path, out: str | Path | None = None, eval_path: str | Path | None = None,
                 comparison: str | Path | None = None, title: str | None = None) -> Path:
    """Render and atomically write the report; returns its path. ``comparison`` defaults to
    ``folder/comparison`` when that folder exists."""
    from mpcore.io.files import write_text_atomic

    folder = Path(folder)
    out = Path(out) if out is not None else folder / "report.html"
    evaluation = None
    if eval_path is not None:
        try:
            evaluation = _load_json(Path(eval_path))
        except (OSError, ValueError) as error:
            raise ReportError(f"cannot read --eval {eval_path}: {error}") from None
        if not isinstance(evaluation, dict):
            raise ReportError(f"--eval {eval_path}: expected a JSON object with 'videos' and 'mean'")
    if comparison is None:
        comparison = default_comparison(folder)
    page, _ = render(folder, out, evaluation, comparison, title, eval_path)
    return write_text_atomic(page, out)
