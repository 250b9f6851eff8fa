"""The operator's command line and stack orchestration: `polyhead up`, train, batch, report, deploy.

The top floor: it imports every service (embedder, heads, gateway) and nothing imports it."""
