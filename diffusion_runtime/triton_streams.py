"""Decoupled requests that may still be answered after ``execute`` returned: each request's stream of responses
(``RequestStream``) and where the requests run (``StreamRunner``: on ``execute``'s thread one at a time, or
several together on worker threads).

``triton_python_backend_utils`` exists only inside Triton's stub: what is needed of it (the FINAL flag) is
passed in by the model.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

RETIRED_REQUESTS = 256  # finished requests kept alive (see RequestStream)


class RequestStream:
    """A request's response sender, through which its responses are sent and its cancellation asked, and the request
    object kept with it. Requests running together are in flight after ``execute`` returned, on worker threads.

    What Triton 2.51's Python backend needs, as far as it was found on a CPU (8 concurrent clients, a loaded host):
    - Sending and asking never overlap, and nothing is asked after the final response: the sender's response
      factory is gone then (seen: a segfault in ``TRITONBACKEND_ResponseFactoryIsCancelled`` when a stop string
      ended a request while the decoder's batch thread asked). A finished request reads as not cancelled.
    - The request object outlives its final response (``StreamRunner`` keeps the last ``RETIRED_REQUESTS``).
    - Custom metrics are updated under one lock (``triton_io.ModelMetrics`` says why): unguarded increments from
      the worker threads were what killed tritonserver under sustained load with 8 requests in flight (segfaults
      in ``libtriton_python.so``, or ``boost::interprocess::lock_exception``)."""

    def __init__(self, request: Any, sender: Any, final_flag: int) -> None:
        self._request = request
        self._sender = sender
        self._final_flag = final_flag  # pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self._lock = threading.Lock()
        self._finished = False

    def is_cancelled(self) -> bool:
        with self._lock:
            return not self._finished and self._sender.is_cancelled()

    def send(self, response: Any, flags: int = 0) -> None:
        with self._lock:
            if self._finished:
                raise RuntimeError("the request's final response was already sent")
            self._finished = bool(flags & self._final_flag)
            self._sender.send(response, flags=flags)


class StreamRunner:
    """Runs each request's whole generation through its ``RequestStream``. With ``together`` 1, one at a time on
    the calling (``execute``'s) thread, every Triton call on that thread. Above 1, on that many worker threads:
    ``execute`` reads and checks a request, hands it over and returns, waiting first for a free place, so further
    requests stay in Triton's bounded queue (answered 429 by the frontend when full)."""

    def __init__(self, together: int, final_flag: int, thread_name_prefix: str) -> None:
        self._final_flag = final_flag
        self._places = threading.BoundedSemaphore(together)
        self._workers = ThreadPoolExecutor(together, thread_name_prefix=thread_name_prefix) if together > 1 else None
        self._retired: deque[RequestStream] = deque(maxlen=RETIRED_REQUESTS)

    def start(self, request: Any, sender: Any, run: Callable[..., None], *args: Any) -> None:
        """``run(stream, *args)`` must answer the request itself, its error included: what it raises reaches only
        the worker's future (or, on ``execute``'s thread, ``execute``)."""
        self._places.acquire()  # released when the request ends
        stream = RequestStream(request, sender, self._final_flag)
        if self._workers is None:
            self._run(stream, run, *args)
        else:
            self._workers.submit(self._run, stream, run, *args)

    def _run(self, stream: RequestStream, run: Callable[..., None], *args: Any) -> None:
        try:
            run(stream, *args)
        finally:
            self._retired.append(stream)
            self._places.release()

    def close(self) -> None:
        """Wait for the requests in flight (before the engine they use closes)."""
        if self._workers is not None:
            self._workers.shutdown(wait=True)
