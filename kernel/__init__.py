"""The shared kernel every process uses: the settings base and secrets
(:mod:`kernel.settings`, :mod:`kernel.credentials`), logs and secret redaction
(:mod:`kernel.logs`), process helpers (:mod:`kernel.process`) and the websocket client
every node keeps to the hub (:mod:`kernel.node_client`). It imports only :mod:`wire`."""
