"""homeport: run language models on your home machine, use them from every machine on your tailnet."""

__version__ = "0.1.0"
