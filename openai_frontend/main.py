"""``python -m openai_frontend.main``: the OpenAI-compatible HTTP server in front of a running tritonserver."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from openai_frontend.app import create_app
from openai_frontend.context import FrontendSettings


def default_media_url() -> str:
    home = os.environ.get("TD_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME", os.path.expanduser("~/.local/share")), "triton-diffusion"
    )
    return "file://" + os.path.join(home, "media")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--triton-url", default="127.0.0.1:8001", help="tritonserver's gRPC address")
    parser.add_argument("--triton-metrics-url", default=None, help="tritonserver's /metrics URL, re-exported")
    parser.add_argument("--fs-url", default=default_media_url(), help="where media is stored: file:///path")
    parser.add_argument("--http-url", default=None, help="public base URL that serves the stored media")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds before a generation is cancelled")
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = FrontendSettings(
        triton_url=args.triton_url,
        triton_metrics_url=args.triton_metrics_url,
        fs_url=args.fs_url,
        http_url=args.http_url,
        request_timeout=args.request_timeout,
    )
    uvicorn.run(
        create_app(settings), host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5
    )


if __name__ == "__main__":
    main()
