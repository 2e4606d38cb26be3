"""Request and response schemas of the vLLM 0.33 pooling API (field names exactly as vLLM's), plus this
gateway's two extensions (`instruction`, `input_format`). Unknown fields are ignored, as vLLM does."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.encoding import EmbedDType, Endianness
from gateway.settings import InputFormat

# Every integer a client sends fits the 32-bit tensors it ends up in (or is refused: never wrapped).
INT32_MAX = 2**31 - 1
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]
Priority = Int32
Truncation = Annotated[int, Field(ge=-1, le=INT32_MAX)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MediaURL(_Request):
    url: str


class ContentPart(_Request):
    """One part of a message's content: text, an image or a video (vLLM also takes a bare
    ``{"image_url": "..."}`` without ``type``)."""

    type: Literal["text", "image_url", "video_url"] | None = None
    text: str | None = None
    image_url: MediaURL | str | None = None
    video_url: MediaURL | str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ContentPart:
        present = [name for name in ("text", "image_url", "video_url") if getattr(self, name) is not None]
        if len(present) != 1:
            raise ValueError("a content part holds exactly one of text, image_url, video_url")
        if self.type is not None and self.type != present[0]:
            raise ValueError(f"content part of type {self.type!r} holds {present[0]}")
        return self

    @property
    def kind(self) -> str:
        return (
            "text" if self.text is not None else ("image_url" if self.image_url is not None else "video_url")
        )

    @property
    def url(self) -> str | None:
        ref = self.image_url if self.image_url is not None else self.video_url
        return ref.url if isinstance(ref, MediaURL) else ref


class ChatMessage(_Request):
    role: Literal["system", "developer", "user"]
    content: str | list[ContentPart]


Conversation = list[ChatMessage]
TokenIds = list[int]


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | list[str] | TokenIds | list[TokenIds] | None = None
    messages: list[Conversation] | Conversation | None = None
    encoding_format: Literal["float", "base64", "bytes", "bytes_only"] = "float"
    dimensions: Annotated[int, Field(le=INT32_MAX)] | None = None
    user: str | None = None
    truncate_prompt_tokens: Truncation | None = None
    embed_dtype: EmbedDType = "float32"
    endianness: Endianness = "native"
    add_special_tokens: bool = True
    add_generation_prompt: bool | None = None  # the official format always has it
    priority: Priority = 0
    request_id: str | None = None
    normalize: bool | None = None
    # Extensions: the query instruction for every `input` string, and how `input` is embedded.
    instruction: str | None = None
    input_format: InputFormat | None = None

    @model_validator(mode="after")
    def _one_form(self) -> EmbeddingRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give exactly one of input and messages")
        if self.normalize is not None:
            raise ValueError("normalize is not supported: vectors are always L2-normalised")
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError("dimensions must be a positive integer")
        return self

    def conversations(self) -> list[Conversation]:
        assert self.messages is not None
        if self.messages and isinstance(self.messages[0], list):
            return self.messages  # type: ignore[return-value]
        return [self.messages]  # type: ignore[list-item]


class ScoreContent(_Request):
    """vLLM's multimodal score input: ``{"content": [parts]}``."""

    content: list[ContentPart] = Field(min_length=1)


ScoreInput = str | ScoreContent


def text_objects(value: Any) -> Any:
    """Jina's and Cohere's ``{"text": ...}`` documents (other keys ignored) as the plain strings they are."""
    if isinstance(value, dict) and "text" in value and "content" not in value:
        return value["text"]
    if isinstance(value, list):
        return [text_objects(entry) for entry in value]
    return value


class RerankRequest(_Request):
    model: str | None = None
    query: ScoreInput
    # A list of documents, or vLLM's single {"content": [parts]} whose every part is one document.
    documents: list[ScoreInput] | ScoreContent
    top_n: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    instruction: str | None = None
    truncate_prompt_tokens: Truncation | None = None
    return_documents: bool = True  # Cohere's and Infinity's field; vLLM always returns them
    priority: Priority = 0
    request_id: str | None = None

    _text_objects = field_validator("query", "documents", mode="before")(text_objects)

    def document_list(self) -> list[ScoreInput]:
        if isinstance(self.documents, ScoreContent):
            return [ScoreContent(content=[part]) for part in self.documents.content]
        return list(self.documents)


ScoreSide = ScoreInput | list[ScoreInput]
# The pairs of fields vLLM's /score takes, in the order it looks for them.
SCORE_FIELD_PAIRS = (
    ("text_1", "text_2"),
    ("queries", "documents"),
    ("queries", "items"),
    ("data_1", "data_2"),
)


class ScoreRequest(_Request):
    model: str | None = None
    text_1: ScoreSide | None = None
    text_2: ScoreSide | None = None
    queries: ScoreSide | None = None
    documents: ScoreSide | None = None
    items: ScoreSide | None = None
    data_1: ScoreSide | None = None
    data_2: ScoreSide | None = None
    instruction: str | None = None
    truncate_prompt_tokens: Truncation | None = None
    priority: Priority = 0
    request_id: str | None = None

    _text_objects = field_validator(
        "text_1", "text_2", "queries", "documents", "items", "data_1", "data_2", mode="before"
    )(text_objects)

    def sides(self) -> tuple[list[ScoreInput], list[ScoreInput]]:
        for first, second in SCORE_FIELD_PAIRS:
            left, right = getattr(self, first), getattr(self, second)
            if left is not None and right is not None:
                return _as_list(left), _as_list(right)
        raise ValueError(
            "give text_1 and text_2 (or queries and documents, queries and items, data_1 and data_2)"
        )


def _as_list(side: ScoreSide) -> list[ScoreInput]:
    return list(side) if isinstance(side, list) else [side]


class TokenizeRequest(_Request):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[Annotated[int, Field(le=INT32_MAX)]]

    @field_validator("tokens")
    @classmethod
    def _non_negative(cls, tokens: list[int]) -> list[int]:
        if any(token < 0 for token in tokens):
            raise ValueError("token ids must be non-negative")
        return tokens


# Responses


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class EmbeddingData(BaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: UsageInfo


class RerankUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class RerankDocument(BaseModel):
    text: str | None = None
    multi_modal: list[dict] | None = None


class RerankResult(BaseModel):
    index: int
    document: RerankDocument | None = None
    relevance_score: float


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: UsageInfo


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None
    tokens: list[Annotated[int, Field(le=INT32_MAX)]]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qwen3-vl-triton"
    root: str
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[dict] = []


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
