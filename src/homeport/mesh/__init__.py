"""homeport across several machines: upstreams, the merged catalogue, routing and the proxy."""
