"""homeport's benchmark against llama.cpp's own server and llama-cpp-python's server.

Run it with ``./dev bench`` (``bench/run.py``); ``bench.cli`` has the options. It lives outside
the package: nothing in ``homeport`` imports it.
"""
