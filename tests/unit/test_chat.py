from backend.text import chat


def test_instruction_gets_a_full_stop_unless_it_ends_in_punctuation():
    assert chat.normalize_instruction("  Retrieve relevant passages  ") == "Retrieve relevant passages."
    assert chat.normalize_instruction("Find the image?") == "Find the image?"
    assert (
        chat.normalize_instruction("检索相关段落。") == "检索相关段落。"
    )  # CJK full stop is punctuation (Po)
    assert chat.normalize_instruction("ends with a quote'") == "ends with a quote'"


def test_empty_instruction_means_the_default():
    for empty in (None, "", "   "):
        assert chat.normalize_instruction(empty) == "Represent the user's input."


def test_prompt_orders_videos_then_images_then_text_and_ends_with_the_generation_prompt():
    prompt = chat.embedding_prompt("Do it.", "caption", image_count=2, video_timestamps=[[0.5, 2.5]])
    assert prompt == (
        "<|im_start|>system\nDo it.<|im_end|>\n<|im_start|>user\n"
        "<0.5 seconds><|vision_start|><|video_pad|><|vision_end|>"
        "<2.5 seconds><|vision_start|><|video_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "caption<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_equals_the_checkpoint_chat_template(tiny_tokenizer):
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Represent the user's input."}]},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": "x"},
                {"type": "image", "image": "y"},
                {"type": "text", "text": "a cat"},
            ],
        },
    ]
    rendered = tiny_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert rendered == chat.embedding_prompt("Represent the user's input.", "a cat", image_count=2)
