"""``giamic serve`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The server runs on a free loopback port; the test uploads a generated recording, waits for the
result, checks the table and the timeline picture, picks an offered file, then uploads bad files
(not media, empty, too long, no audio track) and checks each message, and that the server still
answers afterwards. CI installs Chromium (.ci/run); nothing is downloaded by Playwright."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from recording_helpers import recording, trained_models

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from giamic.inference import AnalyzeOptions, Predictor
    from giamic.inference.serve import ServeSettings, create_app

    base = tmp_path_factory.getbasetemp()
    models = trained_models(base)
    files = tmp_path_factory.mktemp("offered")
    path, info = recording(base, "talk.webm", seconds=40.0, seed=6)
    shutil.copy(path, files / "offered talk.webm")
    predictor = Predictor.load([models["full"], models["VS"]])
    settings = ServeSettings(options=AnalyzeOptions(max_duration=60.0), files_dir=files, max_upload_bytes=50 << 20,
                             work_dir=tmp_path_factory.mktemp("work"))
    app = create_app(predictor, settings)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        assert th.is_alive() and time.time() - t0 < 30, "server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}/", "path": path, "info": info}
    srv.should_exit = True
    th.join(timeout=30)
    app.state.pool.shutdown(wait=True)
    assert not th.is_alive()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian's chromium is needed (apt-get install chromium; .ci/run does it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page()
        pg.set_default_timeout(180_000)
        yield pg
        browser.close()


def _wait_result(page, rows_before: str | None = None) -> None:
    page.wait_for_function("""() => !document.getElementById('results').hidden
                                     || !document.getElementById('error').hidden""")
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()


def test_upload_shows_table_timeline_and_video(server, page):
    from giamic.inference.segments import Span, finalize

    page.goto(server["url"])
    page.wait_for_function("() => document.getElementById('info').textContent.includes('Classes')")
    page.set_input_files("#file", str(server["path"]))
    page.click("#analyze")
    _wait_result(page)
    rows = page.locator("#segments tbody tr")
    expected = finalize([Span(u.start, u.end) for u in server["info"].utterances], server["info"].duration)
    assert rows.count() == len(expected)
    headers = page.locator("#segments thead th").all_inner_texts()
    assert headers[:4] == ["start", "end", "speaker", "label"] and "p(hap)" in headers
    first = rows.nth(0).locator("td").all_inner_texts()
    assert first[3] in ("neu", "ang", "hap", "sad")
    probs = [float(x) for x in first[4:8]]
    assert abs(sum(probs) - 1) < 0.01
    page.wait_for_function("() => { const i = document.getElementById('timeline'); return i.complete && i.naturalWidth > 0; }")
    assert page.evaluate("document.getElementById('timeline').naturalWidth") == 1000
    kinds = page.locator("#downloads a").evaluate_all("as => as.map(a => a.dataset.kind)")
    assert kinds == ["csv", "json", "srt", "vtt", "html"]
    csv_text = page.evaluate("async () => await (await fetch(document.querySelector('#downloads a').href)).text()")
    assert csv_text.splitlines()[0].startswith("start,end,speaker,text,label") and len(csv_text.splitlines()) == len(expected) + 1
    assert page.locator("#media").evaluate("m => m.tagName") == "VIDEO"
    page.wait_for_function("() => document.getElementById('media').readyState >= 1")  # the browser can play it
    assert abs(page.evaluate("document.getElementById('media').duration") - 40.0) < 0.5
    page.wait_for_function("() => { const t = document.getElementById('media').textTracks[0]; t.mode = 'hidden';"
                           " return t.cues && t.cues.length > 0; }")
    assert page.evaluate("document.getElementById('media').textTracks[0].cues.length") == len(expected)


def test_pick_an_offered_file(server, page):
    page.goto(server["url"])
    page.wait_for_selector("#pickbox:not([hidden])")
    assert page.locator("#pick option").all_inner_texts() == ["offered talk.webm"]
    page.click("#analyze-pick")
    _wait_result(page)
    assert page.locator("#segments tbody tr").count() >= 5


@pytest.mark.parametrize("case", ["not media", "empty", "too long", "no audio"])
def test_bad_uploads_get_a_message_and_the_server_keeps_serving(server, page, tmp_path, case):
    from giamic.data.demorecording import make_recording

    if case == "not media":
        f = tmp_path / "notes.mp4"
        f.write_text("these are my meeting notes, not a video\n" * 50)
        want = "notes.mp4: not a media file FFmpeg can read"
    elif case == "empty":
        f = tmp_path / "empty.mp4"
        f.write_bytes(b"")
        want = "empty.mp4: "
    elif case == "too long":
        f = tmp_path / "long.wav"
        make_recording(f, seconds=75, seed=3)
        want = "long.wav: the recording lasts 1.2 min; this server accepts at most 1 min"
    else:
        f = tmp_path / "silent.mp4"
        make_recording(f, seconds=10, seed=3, audio=False)
        want = "silent.mp4: has V; no given model accepts that"
    page.goto(server["url"])
    page.set_input_files("#file", str(f))
    page.click("#analyze")
    page.wait_for_selector("#error:not([hidden])")
    msg = page.locator("#error").inner_text()
    assert want in msg, msg
    if case == "empty":
        assert "empty" in msg
    assert page.locator("#results").is_hidden()
    # Still serving: the page's API answers.
    assert page.evaluate("async () => (await fetch('/api/info')).status") == 200


def test_upload_over_the_size_limit_is_refused_from_its_header(server, page, tmp_path):
    f = tmp_path / "big.mp4"
    f.write_bytes(b"\0" * ((50 << 20) + (1 << 17)))  # just over the server's 50 MB limit
    page.goto(server["url"])
    page.set_input_files("#file", str(f))
    page.click("#analyze")
    page.wait_for_selector("#error:not([hidden])")
    assert "larger than this server's upload limit of 50 MB" in page.locator("#error").inner_text()
    assert page.evaluate("async () => (await fetch('/api/info')).status") == 200


def test_the_html_report_opens_from_disk(server, page, tmp_path, tmp_path_factory):
    """The self-contained report in the same browser, from a file: table, timeline, playable video,
    the emotion subtitles as a text track."""
    from giamic.inference import Predictor, analyze_recording
    from giamic.inference.outputs import write_outputs

    models = trained_models(tmp_path_factory.getbasetemp())
    a = analyze_recording(Predictor.load(models["VS"]), server["path"])
    html = write_outputs(a, tmp_path / "report")["html"]
    page.goto(html.as_uri())
    assert page.locator("#segments tbody tr").count() == len(a.segments)
    page.wait_for_function("() => { const i = document.getElementById('timeline'); return i.complete && i.naturalWidth > 0; }")
    page.wait_for_function("() => document.getElementById('media').readyState >= 1")
    assert page.evaluate("document.getElementById('media').textTracks[0].cues.length") == len(a.segments)
    first = a.segments[0]
    assert page.evaluate("document.getElementById('media').textTracks[0].cues[0].text").startswith(first.label)
