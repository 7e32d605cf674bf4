"""``giamic serve``: a local web page to analyze recordings (a small FastAPI app and one static page).

The page (``static/serve.html``, no outside script, font or style: it works offline) lets a user
upload a recording or pick one from ``--files``, follows the job's progress, then shows the timeline,
the table and the video with the emotion subtitles, with CSV / JSON / SRT / VTT / report downloads.

API (JSON unless said otherwise)::

    GET  /                          the page
    GET  /api/info                  classes, models, limits, files offered for picking
    POST /api/upload                multipart field "file" -> {"job": id} | 4xx {"error": message}
    POST /api/pick                  {"name": file under --files} -> {"job": id} | 4xx {"error": ...}
    GET  /api/jobs/{id}             {"state": queued|running|done|error, "stage", "progress",
                                     "error", "result": {classes, segments, files: {kind: url}}}
    GET  /api/jobs/{id}/files/{kind}  csv | json | srt | vtt | timeline | html | media

A bad upload (empty, larger than the limit, not media, longer than the limit, missing what every
given model needs) is answered with a message that the page shows; the server keeps serving.
Jobs run one at a time in a worker thread (one model in memory). It listens on 127.0.0.1 unless
told otherwise.
"""

import logging
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .recording import AnalyzeOptions

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
_CHUNK = 1 << 20


@dataclass
class ServeSettings:
    options: AnalyzeOptions = AnalyzeOptions(max_duration=30 * 60)
    files_dir: Path | None = None
    max_upload_bytes: int = 500 * 1024 * 1024
    work_dir: Path | None = None  # None: a temporary directory, removed when the server stops


@dataclass
class Job:
    id: str
    path: Path
    name: str
    out_dir: Path
    state: str = "queued"
    stage: str = "queued"
    progress: float = 0.0
    error: str | None = None
    result: dict | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "state": self.state, "stage": self.stage,
                "progress": round(self.progress, 3), "error": self.error, "result": self.result}


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(predictor, settings: ServeSettings):
    """The FastAPI application (uvicorn runs it; tests may too)."""
    from fastapi import FastAPI, Request, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    from giamic.errors import GiamicError

    from .errors import InferenceError
    from .inputs import AUDIO_EXTS, VIDEO_EXTS, probe_media
    from .outputs import write_outputs
    from .recording import analyze_recording

    work = settings.work_dir or Path(tempfile.mkdtemp(prefix="giamic-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    jobs: dict[str, Job] = {}
    lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="giamic-analyze")
    app = FastAPI(title="giamic", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.work_dir = work
    app.state.pool = pool
    app.state.owns_work_dir = settings.work_dir is None
    page = (STATIC / "serve.html").read_text(encoding="utf-8")
    media_exts = AUDIO_EXTS | VIDEO_EXTS
    opts = settings.options

    def offered() -> list[str]:
        if settings.files_dir is None:
            return []
        root = settings.files_dir
        return sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file() and f.suffix.lower() in media_exts)

    def check(path: Path, name: str) -> None:
        """Quick checks before queueing: media, length, what the models need."""
        try:
            probe = probe_media(path)
        except (InferenceError, GiamicError) as e:
            raise _Reject(400, _plain(str(e), path, name)) from None
        if opts.max_duration is not None and probe.duration is not None and probe.duration > opts.max_duration:
            raise _Reject(400, f"{name}: the recording lasts {probe.duration / 60:.1f} min; this server accepts at most "
                               f"{opts.max_duration / 60:g} min")
        available = {m for m, ok in (("video", probe.has_video), ("speech", probe.has_audio)) if ok}
        if probe.has_audio and opts.asr_model:
            available.add("text")
        try:
            predictor.choose(available, name)
        except (InferenceError, GiamicError) as e:
            raise _Reject(400, _plain(str(e), path, name)) from None
        if not probe.has_audio:
            raise _Reject(400, f"{name}: no audio track, so no utterance can be found in it")

    def run(job: Job) -> None:
        def note(stage: str, frac: float) -> None:
            job.stage, job.progress = stage, frac

        job.state = "running"
        try:
            a = analyze_recording(predictor, job.path, opts, progress=note)
            job.files = write_outputs(a, job.out_dir, name="result")
            job.files["media"] = job.path
            base = f"/api/jobs/{job.id}/files"
            job.result = {"classes": a.classes, "duration": a.duration, "has_video": a.has_video,
                          "segmentation": a.segmentation, "model": a.model, "modalities": a.modalities,
                          "segments": [s.to_json() for s in a.segments],
                          "files": {k: f"{base}/{k}" for k in job.files}}
            job.state, job.stage, job.progress = "done", "done", 1.0
        except (InferenceError, GiamicError) as e:
            job.state, job.error = "error", _plain(str(e), job.path, job.name)
        except Exception as e:  # keep serving whatever happened to this file
            log.exception("job %s failed", job.id)
            job.state, job.error = "error", f"{job.name}: could not be analyzed ({type(e).__name__}: {e})"

    def submit(path: Path, name: str) -> dict:
        job = Job(uuid.uuid4().hex[:12], path, name, path.parent / "out")
        with lock:
            jobs[job.id] = job
        pool.submit(run, job)
        return {"job": job.id}

    @app.middleware("http")
    async def _too_large(request: Request, call_next):
        # Refuse an oversized upload from its header, before the body is received and spooled.
        size = request.headers.get("content-length", "")
        if request.url.path == "/api/upload" and size.isdigit() and int(size) > settings.max_upload_bytes + (1 << 16):
            return JSONResponse({"error": f"the file is larger than this server's upload limit of "
                                          f"{settings.max_upload_bytes / 1024 / 1024:g} MB"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(_Reject)
    async def _rejected(request: Request, exc: _Reject):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/api/info")
    async def info() -> dict:
        return {"classes": predictor.classes, "models": [m.description for m in predictor.models],
                "max_upload_mb": settings.max_upload_bytes / 1024 / 1024,
                "max_minutes": None if opts.max_duration is None else opts.max_duration / 60, "files": offered()}

    @app.post("/api/upload")
    async def upload(file: UploadFile) -> dict:
        name = _safe_name(file.filename)
        job_dir = work / uuid.uuid4().hex[:12]
        job_dir.mkdir()
        dest = job_dir / name
        size = 0
        try:
            with open(dest, "wb") as f:
                while chunk := await file.read(_CHUNK):
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        raise _Reject(413, f"{name}: larger than this server's upload limit of "
                                           f"{settings.max_upload_bytes / 1024 / 1024:g} MB")
                    f.write(chunk)
            if size == 0:
                raise _Reject(400, f"{name}: the file is empty (0 bytes)")
            check(dest, name)
        except _Reject:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        return submit(dest, name)

    @app.post("/api/pick")
    async def pick(body: dict) -> dict:
        if settings.files_dir is None:
            raise _Reject(404, "this server offers no files to pick (start it with --files DIR)")
        name = str(body.get("name", ""))
        if name not in offered():
            raise _Reject(404, f"{name}: not one of the offered files")
        src = settings.files_dir / name
        job_dir = work / uuid.uuid4().hex[:12]
        job_dir.mkdir()
        dest = job_dir / src.name
        try:
            dest.symlink_to(src.resolve())
        except OSError:
            shutil.copyfile(src, dest)
        try:
            check(dest, name)
        except _Reject:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        return submit(dest, name)

    @app.get("/api/jobs/{job_id}")
    async def status(job_id: str) -> dict:
        job = jobs.get(job_id)
        if job is None:
            raise _Reject(404, f"no job {job_id}")
        return job.to_json()

    @app.get("/api/jobs/{job_id}/files/{kind}")
    async def files(job_id: str, kind: str):
        job = jobs.get(job_id)
        if job is None or kind not in job.files:
            raise _Reject(404, f"no file {kind!r} for job {job_id}")
        p = job.files[kind]
        media = {"csv": "text/csv", "json": "application/json", "srt": "application/x-subrip", "vtt": "text/vtt",
                 "timeline": "image/png", "html": "text/html"}.get(kind)
        download = None if kind in ("timeline", "media", "vtt") else f"{Path(job.name).stem}{p.name[len('result'):]}"
        return FileResponse(p, media_type=media, filename=download,
                            content_disposition_type="attachment" if download else "inline")

    return app


def _safe_name(filename: str | None) -> str:
    """The upload's base name, usable as a file name here (no path, no leading dot)."""
    import re

    name = re.sub(r"[^\w.\- ]", "_", Path(filename or "").name).lstrip(". ")
    return name or "upload"


def _plain(msg: str, path: Path, name: str) -> str:
    """Messages name the file as the user knows it, not the server's copy."""
    return msg.replace(str(path), name)


def serve(predictor, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8765) -> int:
    """Run the app with uvicorn until interrupted (Ctrl-C)."""
    import uvicorn

    app = create_app(predictor, settings)
    print(f"giamic serve: open http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.pool.shutdown(wait=False, cancel_futures=True)
        if app.state.owns_work_dir:
            shutil.rmtree(app.state.work_dir, ignore_errors=True)
    return 0
