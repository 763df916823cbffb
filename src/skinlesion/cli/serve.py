"""``skinlesion app`` (the Streamlit web app, run as a child process) and ``skinlesion serve`` (the REST service)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import SkinLesionError
from .common import _say, _warn


def app_cmd(
    model: str = typer.Option("default", "--model", "-m", help="Model to serve."),
    port: Optional[int] = typer.Option(
        None,
        "--port",
        help="Port to listen on \\[default: STREAMLIT_SERVER_PORT, else server.port of Streamlit's config.toml, else 8501].",
    ),
    address: str = typer.Option("localhost", "--address", help="Address to bind (0.0.0.0 to serve others)."),
    sample: Optional[Path] = typer.Option(
        None,
        "--sample",
        help="A real dermoscopic image the page offers as 'Try a sample' \\[default: the bundled HAM10000 melanoma]; "
        "a JSON beside it (as skinlesion/samples/ISIC_0024310.json) gives its ground truth and credit.",
    ),
    sample_credit: Optional[str] = typer.Option(
        None,
        "--sample-credit",
        help="Attribution shown under the sample \\[default: the credit in the JSON beside it].",
    ),
    study_db: Optional[str] = typer.Option(
        None,
        "--study-db",
        envvar="SKINLESION_STUDY_DB",
        help="Also open the reader studies of this database (skinlesion study: a SQLite file or a postgresql:// URL): "
        "readers' links (study invite --link http://HOST:PORT) open the reading page.",
    ),
) -> None:
    """Start the Streamlit web app (exporting the model to ONNX Runtime first, once, when it can)."""
    from importlib import resources

    if sample is not None:
        from ..intake import open_image

        sample = sample.expanduser().resolve()
        open_image(sample)  # a sample that is not a readable image is refused here, in one sentence

    from ..bundle import onnx_for, resolve_model_path

    resolve_model_path(model)  # a wrong --model fails here, in one sentence
    if study_db:
        study_db = _study_db(study_db)
    port = _app_port(port)
    _port_free(address, port)
    if onnx_for(model) is None:  # ONNX Runtime serves faster and lighter: export once, before the server starts
        try:
            from ..export import export_onnx

            r = export_onnx(model)
            _say(f"exported the model to {r['path']}; the app uses ONNX Runtime")
        except (SkinLesionError, OSError) as exc:
            _warn(f"serving with PyTorch: could not export to ONNX ({exc})")
    script = str(resources.files("skinlesion") / "app.py")
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        script,
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.showErrorDetails",
        "none",  # never a traceback in the page (details go to the server's console)
        "--client.toolbarMode",
        "minimal",  # no Deploy button
        "--server.maxUploadSize",
        "40",  # MiB, as skinlesion.intake.MAX_FILE_BYTES
        "--runner.postScriptGC",
        "false",  # a full garbage collection after every rerun cost 0.34-0.41 s of CPU per answer (benchmarks/study_load.py)
        "--",
        "--model",
        model,
        *(["--sample", str(sample)] if sample is not None else []),
        *(["--sample-credit", sample_credit] if sample_credit else []),
        *(["--study-db", study_db] if study_db else []),
    ]
    _say(f"skinlesion app on http://{address}:{port}")
    if study_db:
        _say(f"reader studies of {study_db}: readers open http://{address}:{port}/?study=ID&token=TOKEN (study invite --link)")
    raise typer.Exit(_serve(cmd))


def _study_db(db: str) -> str:
    """The app's study database, opened (and migrated) once before Streamlit starts: a wrong URL, a newer schema or a
    missing SQLite file (the app would make an empty one, whose studies no link finds) is refused in one sentence."""
    from ..study.store import Store

    if "://" not in db:
        path = Path(db).expanduser()
        if not path.is_file():
            raise SkinLesionError(
                f"--study-db {db} does not exist; create the study first (skinlesion study create ... --db {db}), or check the path."
            )
        db = str(path.resolve())  # the same file whatever folder Streamlit runs in
    Store(db, flag="--study-db").close()
    return db


def _app_port(port: Optional[int]) -> int:
    """The app's port: --port, else Streamlit's own settings (STREAMLIT_SERVER_PORT, then server.port of
    ~/.streamlit/config.toml or ./.streamlit/config.toml), else 8501."""
    if port is not None:
        where = "--port"
    elif os.environ.get("STREAMLIT_SERVER_PORT", "").strip():
        where, port = "STREAMLIT_SERVER_PORT", os.environ["STREAMLIT_SERVER_PORT"].strip()
    else:
        from streamlit import config

        try:
            config.get_config_options(force_reparse=True)
        except Exception as exc:  # a config.toml Streamlit cannot parse
            raise SkinLesionError(f"Streamlit's config.toml cannot be read ({exc}); fix it, or pass --port.") from None
        where, port = f"server.port in {config.get_where_defined('server.port')}", config.get_option("server.port")
    try:
        port = int(port)
    except (TypeError, ValueError):
        port = -1
    if not 1 <= port <= 65535:
        if where == "--port":
            raise SkinLesionError(f"--port {port} is out of range; pass a port number from 1 to 65535.")
        raise SkinLesionError(f"The app's port from {where} is out of range (not a port number from 1 to 65535); fix it, or pass --port.")
    return port


def _port_free(address: str, port: int) -> None:
    """Refuse a port another server holds, before Streamlit starts (it would exit 0 with a log line)."""
    import socket

    if not 1 <= port <= 65535:
        raise SkinLesionError(f"--port {port} is out of range; use 1 to 65535 (8501 is Streamlit's usual one).")
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise SkinLesionError(f"--address {address!r} is not an address of this machine; use localhost or 0.0.0.0.") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(sockaddr)
        except OSError as exc:
            raise SkinLesionError(
                f"Port {port} on {address} is in use ({exc.strerror}); stop what holds it or choose another --port."
            ) from None


def _serve(cmd: list[str]) -> int:
    """Run the Streamlit server as a child; Ctrl-C or SIGTERM to us stops it too (never an orphan)."""
    import signal
    import subprocess

    class Stop(Exception):
        pass

    def on_term(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    server = subprocess.Popen(cmd)
    try:
        return server.wait()
    except (KeyboardInterrupt, Stop) as exc:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        return 130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(
    model: str = typer.Option("default", "--model", "-m", help="Model to serve: run directory, model file, or 'default'."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --api-keys."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", help="Worker processes, each loading the model once (about one per core)."),
    api_keys: Optional[Path] = typer.Option(
        None, "--api-keys", envvar="SKINLESION_API_KEYS", help="File of API key hashes: callers must send `Authorization: Bearer KEY`."
    ),
    new_key: bool = typer.Option(False, "--new-key", help="Print a new API key, append its hash to --api-keys, and exit."),
    rate: Optional[str] = typer.Option(None, "--rate", help="Requests per key, e.g. 60/min (429 with Retry-After beyond it)."),
    cors: List[str] = typer.Option([], "--cors", help="An origin whose web pages may call the service (repeatable); none by default."),
    max_mb: float = typer.Option(20.0, "--max-mb", help="Largest request body, MiB (413 beyond it, before it is read whole)."),
    max_images: int = typer.Option(32, "--max-images", help="Most images per request (422 beyond it)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds a request may take (503 and abandoned beyond it)."),
    grace: float = typer.Option(30.0, "--grace", help="Seconds in-flight requests get to finish after SIGTERM."),
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", help="Analyses at once per worker \\[default: its share of the cores, one thread each]."
    ),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests admitted to wait per worker beyond --concurrency (503 beyond)."),
    max_connections: int = typer.Option(
        1000, "--max-connections", help="Open connections per worker (the oldest idle one is closed at the cap; 503 if none is idle)."
    ),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection has to send its request headers."),
    keep_alive: float = typer.Option(5.0, "--keep-alive", help="Seconds an idle connection stays open between requests."),
    max_megapixels: float = typer.Option(
        64.0, "--max-megapixels", help="Decoded megapixels one analysis holds at once (images are decoded one at a time)."
    ),
    formats: str = typer.Option("JPEG,PNG", "--formats", help="Image formats accepted, by their first bytes (also GIF, TIFF, BMP, WEBP)."),
    heatmaps: bool = typer.Option(True, "--heatmaps/--no-heatmaps", help="Allow ?heatmap= (its PyTorch weights load at start)."),
    metrics: str = typer.Option(
        "auto", "--metrics", help="/metrics: open, key (an API key needed), off, or auto: open on loopback, key otherwise."
    ),
    study_db: Optional[str] = typer.Option(None, "--study-db", help="Also serve the reader studies in this database (skinlesion study)."),
) -> None:
    """Serve the REST API (FastAPI on uvicorn): /v1/analyse, /v1/model, /v1/health, /v1/ready, /metrics, /docs."""
    from ..serve.settings import Settings

    if new_key:
        from ..serve.keys import new_key as make_key

        if api_keys is None:
            raise SkinLesionError("--new-key appends to a key file: pass --api-keys FILE (or set SKINLESION_API_KEYS).")
        key = make_key(api_keys)
        typer.echo(key)
        _warn(f"its hash was added to {api_keys}; the key is shown only this once, so store it now.")
        return
    settings = Settings(
        model=model,
        host=host,
        port=port,
        workers=workers,
        api_keys=str(api_keys) if api_keys else None,
        rate=rate,
        cors=list(cors),
        max_mb=max_mb,
        max_images=max_images,
        timeout=timeout,
        grace=grace,
        concurrency=concurrency,
        max_queue=max_queue,
        max_connections=max_connections,
        header_timeout=header_timeout,
        keep_alive=keep_alive,
        max_megapixels=max_megapixels,
        formats=formats.split(","),
        heatmaps=heatmaps,
        metrics=metrics,
        study_db=study_db,
    ).check()
    from ..bundle import load_config, onnx_for, resolve_model_path

    load_config(resolve_model_path(model), check_backbones=False)  # a wrong --model fails here, in one sentence
    if onnx_for(model) is None:  # ONNX Runtime serves faster and lighter: export once, before the workers start
        try:
            from ..export import export_onnx

            _say(f"exported the model to {export_onnx(model)['path']}; the service uses ONNX Runtime")
        except (SkinLesionError, OSError) as exc:
            _warn(f"serving with PyTorch: could not export to ONNX ({exc})")
    from ..serve.runner import run

    scheme = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    _say(f"skinlesion serve on {scheme} ({workers} worker(s); API documentation at {scheme}/docs)")
    raise typer.Exit(run(settings))
