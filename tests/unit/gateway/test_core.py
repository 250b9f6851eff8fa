"""The gateway core without HTTP: the embedder's Info is read once per fingerprint, again when it changes."""

from __future__ import annotations

import pytest

from embedder.client import AsyncEmbedderClient
from gateway.core import GatewayService
from gateway.settings import GatewaySettings
from polyhead.errors import ValidationError
from tests.unit.conftest import embedder_calls, running_embedder


async def test_a_new_encoder_behind_the_target_is_noticed_from_the_embed_reply(gateway_routes, embedder):
    heads_dir, routes = gateway_routes
    service = GatewayService(GatewaySettings(heads_dir=heads_dir, routes_file=routes, embedder_target=embedder.target,
                                             reload_interval_s=0))
    await service.start()
    try:
        info_calls = embedder_calls("Info")
        out = await service.embeddings(["first encoder"], "default", "float", 384, "r1")
        assert len(out["data"][0]["embedding"]) == 384
        await service.embeddings(["first encoder again"], "default", "float", 384, "r2")
        assert embedder_calls("Info") - info_calls == 1

        # The same address now answers with another model (a redeploy): 64 dimensions, another fingerprint.
        async with running_embedder(model_handle="fake://?dim=64&seed=2") as other:
            await service.embedder.close()
            service.embedder = AsyncEmbedderClient(other.target)
            with pytest.raises(ValidationError, match="produces 64 dimensions, got 384") as err:
                await service.embeddings(["after the redeploy"], "default", "float", 384, "r3")
            assert err.value.field == "dimensions"
            assert embedder_calls("Info") - info_calls == 2  # re-read once, because the fingerprint changed
            out = await service.embeddings(["after the redeploy"], "default", "float", 64, "r4")
            assert len(out["data"][0]["embedding"]) == 64
            assert embedder_calls("Info") - info_calls == 2
    finally:
        await service.close()
