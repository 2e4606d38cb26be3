"""What each route does, apart from HTTP: validated request in, response model out (vLLM's
``serving.py`` split). ``Gateway`` holds the shared state: settings, the Triton connection, admission,
media fetching, metrics and the tokenizer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway import protocol
from gateway.admission import Admission
from gateway.encoding import encode_vector
from gateway.errors import GatewayError, Kind, invalid
from gateway.items import Item, input_items, message_items, score_item
from gateway.media import MediaFetcher
from gateway.metrics import GatewayMetrics
from gateway.names import ServedNames
from gateway.settings import DEFAULT_TOKENIZER_PATH, GatewaySettings
from gateway.tokenizer import GatewayTokenizer
from gateway.triton import Outcome, TritonBackend
from gateway.triton_errors import refused_for_load

# Strings longer than this are tokenised in a worker thread.
TOKENIZE_OFFLOAD_CHARS = 100_000
# Before sending again what Triton's queue refused.
TRITON_BUSY_PAUSE = 0.05


def usage(counts: list[int] | None) -> protocol.UsageInfo:
    total = sum(counts) if counts else 0
    return protocol.UsageInfo(prompt_tokens=total, total_tokens=total)


class Gateway:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.backend = TritonBackend(settings)
        self.admission = Admission(
            settings.max_in_flight,
            settings.max_waiting,
            settings.queue_timeout,
            settings.in_flight_seconds,
            latency_ratio=settings.latency_target_ratio,
            burst_seconds=settings.burst_seconds,
        )
        self.metrics = GatewayMetrics(self.admission)
        self.backend.observe_call = self.metrics.observe_call
        self.fetcher = MediaFetcher(settings)
        self.names = ServedNames(settings, self.backend)
        self.started = int(time.time())
        self._tokenizer: GatewayTokenizer | None = None

    async def close(self) -> None:
        await self.fetcher.close()
        await self.backend.close()

    async def tokenizer(self) -> GatewayTokenizer:
        """Loaded on first use from GATEWAY_TOKENIZER / MODEL_PATH, else from the model_path the
        embedding preprocess step reports, else from the checkout's tiny checkpoint (the backend's
        default)."""
        if self._tokenizer is None:
            path = self.settings.tokenizer_path
            if path is None:
                path = (await self.backend.info(self.settings.embedding_model)).model_path
            if path is None:
                # The preprocess step reports no model_path when it runs its default checkpoint: the
                # tiny one in this checkout.
                if not DEFAULT_TOKENIZER_PATH.is_dir():
                    raise GatewayError(
                        Kind.UNSUPPORTED, "no tokenizer: set GATEWAY_TOKENIZER to the checkpoint directory"
                    )
                path = str(DEFAULT_TOKENIZER_PATH)
            try:
                self._tokenizer = await asyncio.to_thread(GatewayTokenizer, path)
            except Exception as error:  # noqa: BLE001
                raise GatewayError(Kind.INTERNAL, f"cannot load the tokenizer from {path}: {error}") from None
        return self._tokenizer

    async def _encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        tokenizer = await self.tokenizer()
        if len(text) > TOKENIZE_OFFLOAD_CHARS:
            return await asyncio.to_thread(tokenizer.encode, text, add_special_tokens)
        return tokenizer.encode(text, add_special_tokens)

    async def _max_length(self, model: str) -> int | None:
        return (await self.backend.info(model)).max_length

    def _check_count(self, count: int, field: str) -> None:
        if count > self.settings.max_items:
            raise invalid(f"{field} has {count} entries, over the limit of {self.settings.max_items}", field)

    async def _check_truncation(self, value: int | None, model: str) -> None:
        """-1 and null both mean what the official code does: truncate at the model maximum. A smaller
        limit cannot be honoured inside the official prompt (vllm input_format can)."""
        if value is None or value == -1:
            return
        max_length = await self._max_length(model)
        if value == 0:
            raise invalid("truncate_prompt_tokens must be -1 or a positive number", "truncate_prompt_tokens")
        if max_length is None or value < max_length:
            raise invalid(
                f"truncate_prompt_tokens={value}: the official format truncates at the model maximum "
                f"({max_length}); send -1, or use input_format 'vllm' for raw-token truncation",
                "truncate_prompt_tokens",
            )

    async def _admitted(self, call: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """``call`` to Triton once admitted. Should Triton's own queue refuse it (full, or past its
        timeout: a burst bigger than its queue), it waits again while the queue timeout allows — a burst
        is not overload."""
        deadline = time.monotonic() + self.settings.queue_timeout
        while True:
            async with self.admission.slot(deadline) as ticket:
                try:
                    return await call()
                except GatewayError as error:
                    if refused_for_load(error):
                        self.admission.backend_refused()  # newcomers are refused at once for a moment
                    if error.kind is not Kind.OVERLOADED or time.monotonic() >= deadline:
                        raise
                    ticket.sample = ticket.served = False  # refused: no served call's latency, no completion
                    self.metrics.triton_refusals.inc()
            await asyncio.sleep(TRITON_BUSY_PAUSE)

    async def _truncate_raw(self, items: list[Item], truncate: int | None) -> list[Item]:
        """vLLM's truncation of raw items: k keeps the last k tokens, -1 the last max_model_len, null none
        (the ensemble then refuses an over-long item, as vLLM does). Only items that are cut travel as
        token ids; the rest stay text, so that they batch together."""
        if truncate is None:
            return items
        max_length = await self._max_length(self.settings.embedding_model)
        if truncate == 0:
            raise invalid("truncate_prompt_tokens must be -1 or a positive number", "truncate_prompt_tokens")
        if truncate > 0 and max_length is not None and truncate > max_length:
            raise invalid(
                f"truncate_prompt_tokens ({truncate}) is greater than max_model_len ({max_length})",
                "truncate_prompt_tokens",
            )
        keep = truncate if truncate > 0 else max_length
        if keep is None:
            return items
        truncated = []
        for item in items:
            ids = list(item.token_ids) if item.token_ids is not None else await self._encode(item.text or "")
            truncated.append(Item(raw=True, token_ids=tuple(ids[-keep:])) if len(ids) > keep else item)
        return truncated

    async def embeddings(
        self, request: protocol.EmbeddingRequest, request_id: str
    ) -> protocol.EmbeddingResponse:
        settings = self.settings
        model = await self.names.check(request.model, [settings.embedding_model])
        if request.encoding_format in ("bytes", "bytes_only"):
            raise GatewayError(
                Kind.UNSUPPORTED, f"encoding_format {request.encoding_format!r} is not supported"
            )
        input_format = request.input_format or settings.input_format
        if request.input is not None:
            items = input_items(request, input_format)
            subject = "input"
        else:
            self._check_count(len(request.conversations()), "messages")
            items = await message_items(request, self.fetcher)
            subject = "messages"
        self._check_count(len(items), subject)
        truncate = request.truncate_prompt_tokens
        if request.input is not None and input_format == "vllm":
            items = await self._truncate_raw(items, truncate)
        else:
            await self._check_truncation(truncate, settings.embedding_model)
        outcome = await self.embed_items(items, request.dimensions, subject)
        data = [
            protocol.EmbeddingData(
                index=index,
                embedding=encode_vector(
                    vector, request.encoding_format, request.embed_dtype, request.endianness
                ),
            )
            for index, vector in enumerate(outcome.values)
        ]
        return protocol.EmbeddingResponse(
            id=f"embd-{request_id}",
            created=int(time.time()),
            model=model,
            data=data,
            usage=usage(outcome.token_counts),
        )

    async def embed_items(self, items: list[Item], dimensions: int | None, subject: str) -> Outcome:
        """Vectors of checked items, once admitted, their tokens counted (every embedding route)."""
        self._check_count(len(items), subject)
        outcome = await self._admitted(lambda: self.backend.embed(items, dimensions, subject))
        self.metrics.prompt_tokens.labels("embeddings").inc(sum(outcome.token_counts or ()))
        return outcome

    async def _score_pairs(
        self, pairs: list[tuple[Item, Item]], instruction: str | None, subject: str
    ) -> tuple[list[float], list[int] | None]:
        outcome = await self._admitted(lambda: self.backend.score(pairs, instruction, subject))
        self.metrics.prompt_tokens.labels("score").inc(sum(outcome.token_counts or ()))
        return outcome.values, outcome.token_counts

    async def rerank(self, request: protocol.RerankRequest, request_id: str) -> protocol.RerankResponse:
        settings = self.settings
        model = await self.names.check(request.model, [settings.reranker_model])
        await self._check_truncation(request.truncate_prompt_tokens, settings.reranker_model)
        documents = request.document_list()
        if not documents:
            raise invalid("documents is empty", "documents")
        self._check_count(len(documents), "documents")
        query = await score_item(request.query, self.fetcher, "query")
        items = [
            await score_item(document, self.fetcher, f"documents[{i}]")
            for i, document in enumerate(documents)
        ]
        scores, counts = await self._score_pairs(
            [(query, item) for item in items], request.instruction, "documents"
        )
        # Best first; ties keep input order (sorted is stable).
        order = sorted(range(len(scores)), key=lambda index: -scores[index])
        if request.top_n:
            order = order[: request.top_n]
        results = [
            protocol.RerankResult(
                index=index,
                document=_document(documents[index]) if request.return_documents else None,
                relevance_score=scores[index],
            )
            for index in order
        ]
        total = sum(counts) if counts else 0
        return protocol.RerankResponse(
            id=f"score-{request_id}",
            model=model,
            usage=protocol.RerankUsage(prompt_tokens=total, total_tokens=total),
            results=results,
        )

    async def score(self, request: protocol.ScoreRequest, request_id: str) -> protocol.ScoreResponse:
        settings = self.settings
        model = await self.names.check(request.model, [settings.reranker_model])
        await self._check_truncation(request.truncate_prompt_tokens, settings.reranker_model)
        try:
            left, right = request.sides()
        except ValueError as error:
            raise invalid(str(error)) from None
        if not left or not right:
            raise invalid("both sides of the score request need at least one entry")
        if len(left) != 1 and len(left) != len(right):
            raise invalid(
                f"score pairs 1:1, 1:N or N:N; got {len(left)} queries and {len(right)} documents", "text_1"
            )
        self._check_count(len(right), "text_2")
        queries = [await score_item(value, self.fetcher, f"text_1[{i}]") for i, value in enumerate(left)]
        documents = [await score_item(value, self.fetcher, f"text_2[{i}]") for i, value in enumerate(right)]
        pairs = [
            (queries[0] if len(queries) == 1 else queries[i], document)
            for i, document in enumerate(documents)
        ]
        scores, counts = await self._score_pairs(pairs, request.instruction, "text_2")
        return protocol.ScoreResponse(
            id=f"score-{request_id}",
            created=int(time.time()),
            model=model,
            data=[protocol.ScoreData(index=index, score=score) for index, score in enumerate(scores)],
            usage=usage(counts),
        )

    async def _check_any_model(self, requested: str | None) -> None:
        """/tokenize and /detokenize answer to every served name."""
        await self.names.check(requested, [self.settings.embedding_model, self.settings.reranker_model])

    async def tokenize(self, request: protocol.TokenizeRequest) -> protocol.TokenizeResponse:
        await self._check_any_model(request.model)
        tokens = await self._encode(request.prompt, request.add_special_tokens)
        token_strs = (await self.tokenizer()).tokens(tokens) if request.return_token_strs else None
        return protocol.TokenizeResponse(
            count=len(tokens),
            max_model_len=await self._max_length(self.settings.embedding_model),
            tokens=tokens,
            token_strs=token_strs,
        )

    async def detokenize(self, request: protocol.DetokenizeRequest) -> protocol.DetokenizeResponse:
        await self._check_any_model(request.model)
        tokenizer = await self.tokenizer()
        if any(token >= tokenizer.vocab_size for token in request.tokens):
            raise invalid(f"token ids must be below the vocabulary size {tokenizer.vocab_size}", "tokens")
        return protocol.DetokenizeResponse(prompt=tokenizer.decode(request.tokens))

    async def models(self) -> protocol.ModelList:
        cards = []
        for model in (self.settings.embedding_model, self.settings.reranker_model):
            names = await self.names.listed(model)
            try:
                info = await self.backend.info(model)
            except GatewayError:
                info = None  # Triton not up yet, or this ensemble not loaded: list it without its limits
            for name in names:
                cards.append(
                    protocol.ModelCard(
                        id=name,
                        created=self.started,
                        root=(info.model_path if info else None) or model,
                        max_model_len=info.max_length if info else None,
                    )
                )
        return protocol.ModelList(data=cards)


def _document(value: protocol.ScoreInput) -> protocol.RerankDocument:
    if isinstance(value, str):
        return protocol.RerankDocument(text=value)
    return protocol.RerankDocument(multi_modal=[part.model_dump(exclude_none=True) for part in value.content])
