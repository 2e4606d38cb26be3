"""An independent re-statement of the official Qwen3-VL-Embedding pipeline (QwenLM/Qwen3-VL-Embedding
`Qwen3VLEmbedder.process`), built from transformers' own classes, to check the served vectors against.

What differs from the official code, and why it does not change the numbers:
- qwen-vl-utils cannot be imported here (it needs torchvision), so its few lines of image fetching
  (to_rgb, smart_resize, PIL resize) and video reading (decode all frames, linspace sampling, bicubic
  antialiased resize rounded to uint8) are restated below.
- the Qwen3-VL video processor's argument handling and rescale/normalise need torchvision; its
  patchification (`_preprocess`) does not, so a shim calls that with the official arguments
  (do_resize=False) and applies the elementwise (x/255 - 0.5)/0.5 itself.
"""

from __future__ import annotations

import io
import math
import unicodedata

import numpy as np
import torch
from PIL import Image

DEFAULT_INSTRUCTION = "Represent the user's input."


def _smart_resize(height, width, factor, min_pixels, max_pixels):
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fetch_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        image = white
    else:
        image = image.convert("RGB")
    h, w = _smart_resize(image.height, image.width, 32, 4 * 32 * 32, 1800 * 32 * 32)
    return image.resize((w, h))


def fetch_video(data: bytes, fps: float = 1.0, max_frames: int = 64):
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        video_fps = float(stream.average_rate)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    total = len(frames)
    nframes = total / video_fps * fps
    nframes = min(min(max(nframes, 4), math.floor(min(max_frames, total) / 2) * 2), total)
    nframes = math.floor(nframes / 2) * 2
    indices = torch.linspace(0, total - 1, nframes).round().long().tolist()
    video = torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2)
    min_pixels = 128 * 32 * 32
    max_pixels = max(min(768 * 32 * 32, 128000 * 32 * 32 * 0.9 / nframes * 2), int(min_pixels * 1.05))
    h, w = _smart_resize(video.shape[2], video.shape[3], 32, min_pixels, max_pixels)
    resized = torch.nn.functional.interpolate(
        video.float(), size=[h, w], mode="bicubic", align_corners=False, antialias=True
    )
    resized = resized.clamp(0, 255).round().to(torch.uint8).float()
    return resized, {"fps": video_fps, "frames_indices": indices, "total_num_frames": total}


def conversation(text=None, images=(), videos=(), instruction=None):
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction = instruction + "."
    content = []
    content += [{"type": "video", "video": v} for v in videos]
    content += [{"type": "image", "image": i} for i in images]
    if text is not None:
        content.append({"type": "text", "text": text})
    if not content:
        content.append({"type": "text", "text": "NULL"})
    return [
        {"role": "system", "content": [{"type": "text", "text": instruction or DEFAULT_INSTRUCTION}]},
        {"role": "user", "content": content},
    ]


def raw_video_patches(processor, videos) -> dict:
    """`processor` (a Qwen3VLVideoProcessor)'s patches and grid for frames already sampled and sized, with
    raw 0..255 values: its rescale and normalise need torchvision, absent here (they are elementwise)."""
    return processor._preprocess(
        videos=list(videos),
        do_convert_rgb=False,  # required by 5.x, ignored by 4.57
        size=None,
        resample=None,
        cap_pixels_per_frame=False,
        do_resize=False,
        do_rescale=False,
        do_normalize=False,
        rescale_factor=1 / 255,
        image_mean=(0.5,) * 3,
        image_std=(0.5,) * 3,
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        return_tensors="pt",
    )


class _VideoProcessorShim:
    merge_size = 2
    temporal_patch_size = 2  # read by 5.x's Qwen3VLProcessor for the frame timestamps

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, videos, video_metadata=None, **_ignored):
        out = raw_video_patches(self.inner, videos)
        out["pixel_values_videos"] = (out["pixel_values_videos"] / 255.0 - 0.5) / 0.5
        out["video_metadata"] = video_metadata
        return out


VIDEO_WRAPPER = "<|vision_start|><|video_pad|><|vision_end|>"


def _chat_template(template: str) -> str:
    """The chat template with each video as a bare `<|video_pad|>`, so that every transformers version
    expands it to the official prompt (`<t seconds><|vision_start|>...<|vision_end|>` per frame group):
    4.57 replaces the whole `<|vision_start|><|video_pad|><|vision_end|>` (or a bare pad) by those groups;
    5.x replaces only the pad and would keep an extra outer start/end pair around them."""
    assert VIDEO_WRAPPER in template
    return template.replace(VIDEO_WRAPPER, "<|video_pad|>")


def official_processor(model_path, padding_side: str):
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.processing_utils import ProcessorMixin

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side=padding_side, fix_mistral_regex=False)
    # Without torchvision, transformers' BaseVideoProcessor is a placeholder and the processor's class
    # check rejects the (working) Qwen3-VL video processor; skip that check while constructing.
    check = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, argument: type(argument)
    try:
        processor = Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(
                patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
            ),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(),
            chat_template=_chat_template(tokenizer.chat_template),
        )
    finally:
        ProcessorMixin.check_argument_for_proper_class = check
    processor.video_processor = _VideoProcessorShim(processor.video_processor)
    return processor


def fetch_media(conversations):
    """qwen-vl-utils' process_vision_info over our byte blobs: images and (video, metadata) in order."""
    from transformers.video_utils import VideoMetadata

    images, videos, metadata = [], [], []
    for conversation_ in conversations:
        for message in conversation_:
            for element in message["content"]:
                if element["type"] == "image":
                    images.append(fetch_image(element["image"]))
                elif element["type"] == "video":
                    video, meta = fetch_video(element["video"])
                    videos.append(video)
                    metadata.append(VideoMetadata(**meta))
    return images or None, videos or None, metadata or None


class OfficialEmbedder:
    def __init__(self, model_path, dtype=torch.float32):
        from transformers import Qwen3VLModel

        self.processor = official_processor(model_path, "right")
        self.model = Qwen3VLModel.from_pretrained(
            model_path, dtype=dtype, key_mapping={r"^model\.": ""}
        ).eval()

    @torch.no_grad()
    def embed(self, items: list[dict], max_length: int = 8192) -> np.ndarray:
        """items: dicts with optional text, images (bytes), videos (bytes), instruction, dimensions."""
        conversations = [
            conversation(
                item.get("text"), item.get("images", ()), item.get("videos", ()), item.get("instruction")
            )
            for item in items
        ]
        text = self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
        images, videos, metadata = fetch_media(conversations)
        inputs = self.processor(
            text=text,
            images=images,
            videos=videos,
            video_metadata=metadata,
            truncation=True,
            max_length=max_length,
            padding=True,
            do_resize=False,
            return_tensors="pt",
        )
        inputs.pop("token_type_ids", None)
        hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"]
        last = mask.shape[1] - mask.flip(dims=[1]).argmax(dim=1) - 1
        pooled = torch.nn.functional.normalize(hidden[torch.arange(hidden.shape[0]), last], p=2, dim=-1)
        vectors = []
        for item, vector in zip(items, pooled):
            dims = item.get("dimensions") or vector.shape[0]
            vectors.append(torch.nn.functional.normalize(vector[:dims], p=2, dim=-1).numpy())
        return vectors


RERANK_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_RERANK_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


def _side_content(side: dict, prefix: str) -> list[dict]:
    content = [{"type": "text", "text": prefix}]
    content += [{"type": "video", "video": v} for v in side.get("videos", ())]
    content += [{"type": "image", "image": i} for i in side.get("images", ())]
    if side.get("text") is not None:
        content.append({"type": "text", "text": side["text"]})
    if len(content) == 1:
        content.append({"type": "text", "text": "NULL"})
    return content


def rerank_conversation(query: dict, document: dict, instruction=None):
    contents = [{"type": "text", "text": "<Instruct>: " + (instruction or DEFAULT_RERANK_INSTRUCTION)}]
    contents += _side_content(query, "<Query>:") + _side_content(document, "\n<Document>:")
    return [
        {"role": "system", "content": [{"type": "text", "text": RERANK_SYSTEM}]},
        {"role": "user", "content": contents},
    ]


def _truncate(ids: list[int], max_length: int, special: set[int]) -> list[int]:
    if len(ids) <= max_length:
        return ids
    budget = max_length - sum(1 for token in ids if token in special)
    kept, ordinary = [], 0
    for token in ids:
        if token in special:
            kept.append(token)
        elif ordinary < budget:
            kept.append(token)
            ordinary += 1
    return kept


class OfficialReranker:
    """`Qwen3VLReranker.process`: one pair per forward, left padding, h[:, -1] · (W[yes] - W[no])."""

    def __init__(self, model_path, dtype=torch.float32):
        from transformers import Qwen3VLForConditionalGeneration

        self.processor = official_processor(model_path, "left")
        lm = Qwen3VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype).eval()
        self.model = lm.model
        vocab = self.processor.tokenizer.get_vocab()
        weight = lm.lm_head.weight.data
        self.direction = weight[vocab["yes"]] - weight[vocab["no"]]

    @torch.no_grad()
    def score(
        self, query: dict, documents: list[dict], instruction=None, max_length: int = 10240
    ) -> list[float]:
        scores = []
        special = set(self.processor.tokenizer.all_special_ids)
        for document in documents:
            pair = rerank_conversation(query, document, instruction)
            text = self.processor.apply_chat_template([pair], tokenize=False, add_generation_prompt=True)
            images, videos, metadata = fetch_media([pair])
            inputs = self.processor(
                text=text,
                images=images,
                videos=videos,
                video_metadata=metadata,
                truncation=False,
                padding=False,
                do_resize=False,
            )
            ids = inputs["input_ids"][0]
            ids = _truncate(ids[:-5], max_length, special) + ids[-5:]
            model_inputs = {
                "input_ids": torch.tensor([ids]),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            }
            for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
                if key in inputs:
                    model_inputs[key] = torch.as_tensor(np.asarray(inputs[key]))
            if "mm_token_type_ids" in inputs:  # transformers 5.x: recomputed for the truncated ids
                types = self.processor.create_mm_token_type_ids([ids])
                model_inputs["mm_token_type_ids"] = torch.tensor(types)
            hidden = self.model(**model_inputs).last_hidden_state[:, -1]
            scores.append(float(torch.sigmoid(hidden @ self.direction)))
        return scores
