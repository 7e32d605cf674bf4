"""What ``giamic analyze`` writes for one recording: table, subtitles, timeline, HTML report.

* ``NAME.emotions.csv``: one row a segment: start, end, speaker, text, label, one probability column
  per class (``p_neu``, ...), the modalities used, the face box and the crop box (``x y w h``), how
  the segment was found, and the error for a segment that could not be predicted;
* ``NAME.emotions.json``: the same with the recording's facts (:meth:`RecordingAnalysis.to_json`);
* ``NAME.srt`` and ``NAME.vtt``: one cue a segment: ``hap 0.81`` (label and its probability), then
  the text; WebVTT cues carry the speaker as a voice tag;
* ``NAME.timeline.png``: class probabilities over time (one step line per class), each segment
  shaded in its label's colour;
* ``NAME.report.html``: one self-contained page (no network, no other file needed): the video with
  the subtitles as a text track, the timeline, the table. The video is embedded when it is small
  (``embed_limit``), else linked by its path relative to the report.

All files are written atomically; an unwritable output directory raises :class:`OutputError`.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import mimetypes
import os
from pathlib import Path

from giamic.errors import from_os_error
from giamic.utils.io import write_bytes_atomic, write_text_atomic

from .recording import RecordingAnalysis, Segment

CLASS_COLORS = {"neu": "#7f7f7f", "ang": "#d62728", "hap": "#e6a800", "sad": "#1f77b4"}
_OTHER = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
EMBED_LIMIT = 25 * 1024 * 1024  # bytes: larger videos are linked, not embedded
_ABBREV = {"video": "V", "speech": "S", "text": "T"}


def class_colors(classes: list[str]) -> dict[str, str]:
    out, k = {}, 0
    for c in classes:
        if c in CLASS_COLORS:
            out[c] = CLASS_COLORS[c]
        else:
            out[c] = _OTHER[k % len(_OTHER)]
            k += 1
    return out


def _box(b) -> str:
    return " ".join(str(int(v)) for v in b) if b else ""


def to_csv(a: RecordingAnalysis) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["start", "end", "speaker", "text", "label"] + [f"p_{c}" for c in a.classes]
               + ["modalities", "face_box", "crop_box", "crop", "source", "error"])
    for s in a.segments:
        probs = [f"{s.probabilities[c]:.4f}" if c in s.probabilities else "" for c in a.classes]
        w.writerow([f"{s.start:.3f}", f"{s.end:.3f}", s.speaker or "", s.text or "", s.label or ""] + probs
                   + ["+".join(_ABBREV[m] for m in s.modalities), _box(s.face_box), _box(s.crop_box), s.crop or "",
                      s.source, s.error or ""])
    return buf.getvalue()


def _ts(sec: float, sep: str) -> str:
    ms = int(round(sec * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _cue_text(s: Segment) -> str:
    head = f"{s.label} {s.probabilities[s.label]:.2f}" if s.label else "(not predicted)"
    return head + (f"\n{s.text}" if s.text else "")


def to_srt(a: RecordingAnalysis) -> str:
    blocks = []
    for n, s in enumerate(a.segments, start=1):
        blocks.append(f"{n}\n{_ts(s.start, ',')} --> {_ts(s.end, ',')}\n{_cue_text(s)}\n")
    return "\n".join(blocks)


def to_vtt(a: RecordingAnalysis) -> str:
    out = ["WEBVTT", ""]
    for n, s in enumerate(a.segments, start=1):
        text = _cue_text(s).replace("-->", "->")
        if s.speaker:
            text = f"<v {s.speaker}>" + text
        out += [str(n), f"{_ts(s.start, '.')} --> {_ts(s.end, '.')}", text, ""]
    return "\n".join(out)


def timeline_png(a: RecordingAnalysis, width: float = 10.0, height: float = 3.2, dpi: int = 100) -> bytes:
    """The timeline picture: class probabilities over time, segments shaded by label (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = class_colors(a.classes)
    fig, ax = plt.subplots(figsize=(width, height), dpi=dpi)
    ok = [s for s in a.segments if s.label]
    for s in ok:
        ax.axvspan(s.start, s.end, color=colors[s.label], alpha=0.16, lw=0)
    for c in a.classes:
        xs, ys = [], []
        for s in ok:
            xs += [s.start, s.end, s.end]
            ys += [s.probabilities[c], s.probabilities[c], np.nan]
        ax.plot(xs, ys, color=colors[c], lw=1.8, label=c)
    for s in a.segments:
        if s.error:
            ax.axvspan(s.start, s.end, color="black", alpha=0.08, hatch="//", lw=0)
    ax.set_xlim(0, max(a.duration, max((s.end for s in a.segments), default=1.0)))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time (mm:ss)")
    ax.set_ylabel("probability")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{int(v) // 60}:{int(v) % 60:02d}"))
    ax.set_title(f"{a.path.name}: {len(ok)} utterance(s), shaded by predicted emotion", fontsize=10, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(a.classes), fontsize=8, frameon=False,
              borderaxespad=0.2)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _media_src(video: Path, report_dir: Path, embed_limit: int) -> tuple[str, str]:
    mime = mimetypes.guess_type(video.name)[0] or "video/mp4"
    if video.suffix.lower() == ".mkv":
        mime = "video/webm"  # Chromium plays Matroska with WebM codecs under this type
    try:
        size = video.stat().st_size
    except OSError:
        size = embed_limit + 1
    if size <= embed_limit:
        return f"data:{mime};base64,{base64.b64encode(video.read_bytes()).decode()}", mime
    rel = os.path.relpath(video.resolve(), report_dir.resolve())
    return html.escape(Path(rel).as_posix(), quote=True), mime


def to_html(a: RecordingAnalysis, png: bytes, report_dir: Path, embed_limit: int = EMBED_LIMIT) -> str:
    """The self-contained report page."""
    colors = class_colors(a.classes)
    src, mime = _media_src(a.path, report_dir, embed_limit) if (a.has_video or a.has_audio) else ("", "")
    tag = "video" if a.has_video else "audio"
    cues = [{"start": s.start, "end": s.end, "text": _cue_text(s)} for s in a.segments]
    rows = []
    for s in a.segments:
        probs = "".join(f"<td>{s.probabilities[c]:.3f}</td>" if c in s.probabilities else "<td></td>" for c in a.classes)
        lab = (f'<td class="lab" style="background:{colors[s.label]}33">{html.escape(s.label)}</td>' if s.label
               else f'<td class="err" title="{html.escape(s.error or "", quote=True)}">failed</td>')
        rows.append(f'<tr data-start="{s.start}"><td>{_ts(s.start, ".")[3:]}</td><td>{_ts(s.end, ".")[3:]}</td>'
                    f'<td>{html.escape(s.speaker or "")}</td>{lab}{probs}'
                    f'<td>{"+".join(_ABBREV[m] for m in s.modalities)}</td><td>{_box(s.face_box)}</td>'
                    f'<td class="text">{html.escape(s.text or s.error or "")}</td></tr>')
    head = "".join(f"<th>p({html.escape(c)})</th>" for c in a.classes)
    img = base64.b64encode(png).decode()
    title = html.escape(a.path.name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Emotions: {title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} h1{{font-size:1.3em}}
video,audio{{max-width:100%;width:640px;background:#000}} img{{max-width:100%}}
table{{border-collapse:collapse;font-size:.9em}} td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left}}
tr:hover{{background:#f3f3f3;cursor:pointer}} td.err{{color:#b00}} .meta{{color:#555;font-size:.9em}}
</style></head><body>
<h1>Emotions in {title}</h1>
<p class="meta">{len(a.segments)} segment(s) ({html.escape(a.segmentation)}), model {html.escape(a.model)}
({"+".join(_ABBREV[m] for m in a.modalities)}), {a.duration:.1f} s.</p>
{f'<{tag} id="media" controls preload="metadata" src="{src}"></{tag}>' if src else ''}
<h2>Timeline</h2><img id="timeline" alt="class probabilities over time" src="data:image/png;base64,{img}">
<h2>Segments</h2>
<table id="segments"><thead><tr><th>start</th><th>end</th><th>speaker</th><th>label</th>{head}<th>mods</th>
<th>face box</th><th>text</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<script>
const cues = {json.dumps(cues)};
const media = document.getElementById("media");
if (media && media.addTextTrack && window.VTTCue) {{
  const track = media.addTextTrack("subtitles", "emotions", "en");
  for (const c of cues) track.addCue(new VTTCue(c.start, c.end, c.text));
  track.mode = "showing";
}}
for (const tr of document.querySelectorAll("#segments tbody tr")) {{
  tr.addEventListener("click", () => {{ if (media) {{ media.currentTime = +tr.dataset.start; media.play(); }} }});
}}
</script>
</body></html>
"""


def write_outputs(a: RecordingAnalysis, out_dir: str | Path, name: str | None = None,
                  embed_limit: int = EMBED_LIMIT) -> dict[str, Path]:
    """Write every output for one recording into ``out_dir``; returns ``{kind: path}``."""
    out_dir = Path(out_dir)
    name = name or a.path.stem
    paths = {
        "csv": out_dir / f"{name}.emotions.csv",
        "json": out_dir / f"{name}.emotions.json",
        "srt": out_dir / f"{name}.srt",
        "vtt": out_dir / f"{name}.vtt",
        "timeline": out_dir / f"{name}.timeline.png",
        "html": out_dir / f"{name}.report.html",
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = timeline_png(a)
        write_text_atomic(paths["csv"], to_csv(a))
        write_text_atomic(paths["json"], json.dumps(a.to_json(), indent=2, ensure_ascii=False) + "\n")
        write_text_atomic(paths["srt"], to_srt(a))
        write_text_atomic(paths["vtt"], to_vtt(a))
        write_bytes_atomic(paths["timeline"], png)
        write_text_atomic(paths["html"], to_html(a, png, out_dir, embed_limit))
    except OSError as e:
        raise from_os_error(e) from e
    return paths
