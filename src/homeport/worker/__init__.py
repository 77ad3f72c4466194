"""``homeport worker``: this machine's devices served over ggml's RPC to a homeport server."""
