"""``python -m openai_frontend.main``: the OpenAI-compatible HTTP server in front of a running tritonserver."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from openai_frontend.app import create_app
from openai_frontend.context import FrontendSettings
from openai_frontend.job_store import JobStoreUnavailable
from openai_frontend.security import is_loopback
from openai_frontend.storage import StorageUnavailable
from openai_frontend.triton.pool import DNS_REFRESH_S


def data_home() -> str:
    """Where media and job records persist by default (not a cache: users' files live here)."""
    return os.path.join(os.environ.get("XDG_DATA_HOME", os.path.expanduser("~/.local/share")), "triton-diffusion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--triton-url",
        action="append",
        help="a tritonserver's gRPC address (default 127.0.0.1:8001), or dns:///host:port for every server the "
        "name resolves to (a Kubernetes headless Service: calls spread over its pods); repeatable",
    )
    parser.add_argument(
        "--triton-metrics-url",
        action="append",
        default=[],
        help="a tritonserver's /metrics URL, in the same order (for a dns: URL, on the same host name)",
    )
    parser.add_argument(
        "--triton-dns-refresh-s",
        type=float,
        default=DNS_REFRESH_S,
        help="seconds between resolutions of a dns: Triton URL (also resolved at once when a server is lost)",
    )
    parser.add_argument(
        "--fs-url", default="file://" + os.path.join(data_home(), "media"), help="where media is stored: file:///path"
    )
    parser.add_argument("--http-url", default=None, help="public base URL that serves the stored media")
    parser.add_argument("--presign-expiry", type=int, default=3600, help="seconds presigned S3 URLs stay valid")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds before a generation is cancelled")
    parser.add_argument("--state-dir", default=os.path.join(data_home(), "state"), help="video job records")
    parser.add_argument(
        "--job-store",
        default=None,
        help="where video job records live: a SQLite file (default <state-dir>/videos.sqlite3; one frontend) or a "
        "postgresql://user:password@host/db URL shared by several frontends (also TRITON_DIFFUSION_JOB_STORE)",
    )
    parser.add_argument(
        "--job-lease-s",
        type=float,
        default=20.0,
        help="seconds a video job stays claimed by its frontend without renewal; after that another frontend runs it",
    )
    parser.add_argument(
        "--job-max-attempts", type=int, default=3, help="runs of one video job, each ended by its frontend dying"
    )
    parser.add_argument("--video-poll-ms", type=int, default=1000, help="openai-poll-after-ms for pending videos")
    parser.add_argument("--max-pending-videos", type=int, default=64, help="queued or running videos per model")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accept this key as 'Authorization: Bearer <key>' (repeatable; also TRITON_DIFFUSION_API_KEYS, comma "
        "separated). Required when binding a non-loopback address, unless --no-auth",
    )
    parser.add_argument("--no-auth", action="store_true", help="serve a non-loopback address without API keys")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body accepted")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log one line per HTTP request (--no-access-log saves ~0.15 ms of CPU per request)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = tuple(args.api_key) + tuple(
        k.strip() for k in os.environ.get("TRITON_DIFFUSION_API_KEYS", "").split(",") if k.strip()
    )
    if not keys and not args.no_auth and not is_loopback(args.host):
        raise SystemExit(
            f"error: binding {args.host} exposes the API beyond this machine: give --api-key (or "
            "TRITON_DIFFUSION_API_KEYS), or --no-auth to allow anyone"
        )
    settings = FrontendSettings(
        triton_urls=tuple(args.triton_url or ["127.0.0.1:8001"]),
        triton_metrics_urls=tuple(args.triton_metrics_url),
        triton_dns_refresh_s=args.triton_dns_refresh_s,
        fs_url=args.fs_url,
        http_url=args.http_url,
        presign_expiry=args.presign_expiry,
        request_timeout=args.request_timeout,
        state_dir=args.state_dir,
        job_store=args.job_store or os.environ.get("TRITON_DIFFUSION_JOB_STORE") or None,
        job_lease_s=args.job_lease_s,
        job_max_attempts=args.job_max_attempts,
        video_poll_ms=args.video_poll_ms,
        max_pending_videos=args.max_pending_videos,
        api_keys=keys,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
    )
    try:
        app = create_app(settings)
    except (StorageUnavailable, JobStoreUnavailable, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
        access_log=args.access_log,
    )


if __name__ == "__main__":
    main()
