"""Who may talk to the server: binding, tailnet identity, policy, tokens, the guard, the audit log.

    binding      where to listen (loopback, --tailnet, --expose) and the banner's sentence
    addresses    tailnet ranges, interface addresses
    machine      this machine's addresses, names, owner and tailnet mode, kept fresh
    guard        the ASGI middleware every request passes:
      browser      Host allow-list (DNS rebinding), Origin allow-list (CORS)
      identify     who: this machine, a token, `tailscale serve`'s caller, or whois of the peer
        localapi     tailscaled's LocalAPI over its Unix socket (whois, status)
        connection   whois answers remembered for one TCP connection's life
        tokens       bearer tokens, stored as hashes
      policy       what they may do (policy_file reads and checks the TOML)
      limits       concurrent requests, requests and tokens per minute (429 + Retry-After)
      audit        one JSON line per request, rotated
    caller       the decision, handed to the routes through the ASGI scope
    gate         all of the above for one server, with the policy reloaded on SIGHUP
"""
