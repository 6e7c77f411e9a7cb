"""The frontend's view of Triton: which models it serves under which OpenAI ids (``discovery``), the pool of
servers calls go to (``pool``, over ``endpoint``s), readiness, bringing back a model whose stub process died
(``recovery``), reading Triton's failures (``failures``), its Prometheus metrics (``metrics``), and ending a
generation whose client went away (``disconnect``)."""

from openai_frontend.triton.disconnect import cancel_on_disconnect
from openai_frontend.triton.discovery import TASKS, ServedModel
from openai_frontend.triton.endpoint import TritonEndpoint, channel_args
from openai_frontend.triton.pool import TritonBackend
from openai_frontend.triton.recovery import RELOAD_INTERVAL_S, RELOAD_PARAMETER

__all__ = [
    "RELOAD_INTERVAL_S",
    "RELOAD_PARAMETER",
    "TASKS",
    "ServedModel",
    "TritonBackend",
    "TritonEndpoint",
    "cancel_on_disconnect",
    "channel_args",
]
