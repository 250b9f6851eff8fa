"""`polyhead batch`: classify a whole JSONL/CSV file, resumably, through the gateway or directly.

Two predictors answer a chunk of texts: `GatewayPredictor` (HTTP, what a client of a running stack
uses) and `DirectPredictor` (embedder gRPC + the head's artifact loaded here: a nightly job needs
no head or gateway process, only an embedder). Rows are sent in chunks with bounded concurrency.
Each finished chunk is appended to the output as JSONL lines carrying the input row number, in one
write + flush; a restart reads the output, drops a torn last line, and skips every row already
there, so no row is written twice or lost.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import httpx

from heads.api import PredictResponse, decode_predict_response, encode_predict_json
from polyhead.errors import PolyheadError


@dataclass
class BatchReport:
    rows_total: int
    rows_done_before: int
    rows_classified: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows_classified / self.seconds if self.seconds else 0.0


def read_rows(path: Path, text_field: str) -> Iterator[tuple[int, dict]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            yield from enumerate(csv.DictReader(f))
    else:
        with path.open(encoding="utf-8") as f:
            row_no = 0
            for line in f:
                if line.strip():
                    yield row_no, json.loads(line)
                    row_no += 1


def done_rows(output: Path) -> set[int]:
    """Rows already in the output; a torn last line (a crash mid-write) is cut off."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        output.write_bytes(data)
    done = set()
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            done.add(json.loads(line)["row"])
    return done


class Predictor(Protocol):
    async def predict(self, texts: list[str]) -> PredictResponse:
        """The head API's predict response for the texts, in order."""


class GatewayPredictor:
    def __init__(self, gateway: str, model: str, *, api_key: str | None = None, timeout_s: float = 60,
                 attempts: int = 6):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=gateway, timeout=timeout_s, headers=headers)
        self.model, self.attempts = model, attempts

    async def predict(self, texts: list[str]) -> PredictResponse:
        for attempt in range(self.attempts):
            try:
                r = await self.client.post(f"/v1/models/{self.model}/predict", json={"texts": texts})
            except httpx.TransportError as exc:  # gateway restarting: same back-off as a 503
                if attempt == self.attempts - 1:
                    raise RuntimeError(f"gateway unreachable: {exc!r}") from None
                await asyncio.sleep(1)
                continue
            if r.status_code == 200:
                try:
                    return decode_predict_response(r.content)
                except ValueError as exc:  # pydantic's ValidationError
                    raise RuntimeError(f"gateway answered a body that is not a predict response: {exc}") from None
            if r.status_code in (429, 503) and attempt < self.attempts - 1:
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                continue
            raise RuntimeError(f"gateway answered {r.status_code}: {r.text[:300]}")
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.client.aclose()


class DirectPredictor:
    """The head's artifact in this process, fed by the embedder through the head's own pipeline:
    same labels as the head serves, same fingerprint check (another encoder is refused, not guessed)."""

    def __init__(self, embedder_target: str, models_dir: Path, config_path: Path, *, version: str | None = None,
                 timeout_s: float = 60):
        from embedder.client import AsyncEmbedderClient
        from heads.config import load_head_config
        from heads.pipeline import HeadPipeline
        from heads.servable import HeadServable

        config = load_head_config(config_path)
        self.servable = HeadServable.load(models_dir, config.name, version or config.serving.version, config.serving)
        self.client = AsyncEmbedderClient(embedder_target, timeout_s=timeout_s)  # construct inside the event loop
        self.pipeline = HeadPipeline(config.name, lambda: self.servable, self.client)

    async def predict(self, texts: list[str]) -> PredictResponse:
        try:
            done = await self.pipeline.run(texts)  # the fingerprint is checked before this chunk is written
        except PolyheadError as err:
            raise RuntimeError(err.message) from None
        result = PredictResponse(done.servable.name, done.servable.version, done.fingerprint, "", done.embed_s * 1000,
                                 done.predictions)
        return decode_predict_response(encode_predict_json(result))  # the wire's rounding, as through the gateway

    async def aclose(self) -> None:
        await self.client.close()


async def classify_file(predictor: Predictor, input_path: Path, output: Path, *, text_field: str = "text",
                        id_field: str | None = None, chunk_size: int = 32, concurrency: int = 4, on_progress=None,
                        max_chunks: int | None = None) -> BatchReport:
    started = time.perf_counter()
    done = done_rows(output)
    pending: list[tuple[int, dict]] = [(i, r) for i, r in read_rows(input_path, text_field) if i not in done]
    total = len(pending) + len(done)
    for i, row in pending:
        if not isinstance(row.get(text_field), str) or not row[text_field].strip():
            raise ValueError(f"{input_path}: row {i}: field {text_field!r} must be a non-empty string")
    chunks = [pending[i:i + chunk_size] for i in range(0, len(pending), chunk_size)]
    if max_chunks is not None:
        chunks = chunks[:max_chunks]  # lets tests stop part-way as an interruption would
    semaphore = asyncio.Semaphore(concurrency)
    classified = 0
    output.parent.mkdir(parents=True, exist_ok=True)

    with output.open("a", encoding="utf-8") as out:

        async def run(chunk):
            nonlocal classified
            async with semaphore:
                body = await predictor.predict([row[text_field] for _, row in chunk])
            lines = []
            for (i, row), pred in zip(chunk, body.predictions):
                record = {"row": i, "label": pred.label, "probability": pred.probability, "version": body.version}
                if id_field:
                    record["id"] = row.get(id_field)
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            out.write("".join(lines))  # one chunk, one write: a crash tears at most the last line
            out.flush()
            classified += len(chunk)
            if on_progress:
                on_progress(len(chunk))

        await asyncio.gather(*(run(c) for c in chunks))
    return BatchReport(total, len(done), classified, time.perf_counter() - started)
