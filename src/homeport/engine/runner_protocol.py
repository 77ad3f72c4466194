"""The channel between the server and a runner process: length-prefixed pickled tuples.

Both ends are homeport, started together over a socketpair only they share, so pickle is safe
here (nothing else can write to the channel). Each message is ``(kind, payload)`` from the server
and ``(kind, payload, metric_ops)`` from the runner:

    server → runner                          runner → server
    load    (model path, ContextSettings,    ready    None
             Offload)
    submit  (job id, prompt, sampling,       failed   the HomeportError the load raised
             num_predict, stop)              events   [(job id, TextChunk | Finished | Failed,
    cancel  job id                                      tokens generated since, admitted)]
    embed   (job id, tokens)                 embedded (job id, vector or HomeportError)
    stop    None                             metrics  None

``metric_ops`` are the runner's metric updates since its last message, which the server applies to
its own registry (see ``MetricOp``): the runner's scheduler counts exactly as it would in-process.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 30  # a frame longer than this means the stream is corrupt

# (metric name in homeport.metrics, label values, method: inc/dec/set/observe, value)
MetricOp = tuple[str, tuple[str, ...], str, float]


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def body_size(header: bytes) -> int:
    (size,) = HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise EOFError("corrupt runner channel")
    return int(size)


def parse(body: bytes) -> tuple[Any, ...]:
    message = pickle.loads(body)
    assert isinstance(message, tuple)
    return message


def receive_blocking(sock: socket.socket) -> tuple[Any, ...]:
    """One message from a blocking socket; EOFError when the other end is gone."""
    return parse(_read_exactly(sock, body_size(_read_exactly(sock, HEADER.size))))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("runner channel closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
