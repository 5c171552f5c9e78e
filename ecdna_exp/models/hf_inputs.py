"""Turning requests into model inputs: chat-template rendering, PIL images and left-padded tokens."""

from __future__ import annotations

from typing import Any

import jinja2
import numpy as np
from PIL import Image

from ecdna_exp.models.base import ModelConfigError, Request


def split_images(messages: list[dict]) -> tuple[list[dict], list[Image.Image]]:
    """Replace each image array in ``messages`` by a placeholder part and collect the images as PIL, in order.

    The arrays are ``(H, W, 3)`` uint8 RGB. Chat templates only need to see
    where an image part is, not its pixels.
    """
    template_messages = []
    images = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            template_messages.append(dict(message))
            continue
        parts = []
        for part in content:
            if part.get("type") == "image":
                images.append(Image.fromarray(np.asarray(part["image"], dtype=np.uint8)).convert("RGB"))
                parts.append({"type": "image"})
            else:
                parts.append(dict(part))
        template_messages.append({**message, "content": parts})
    return template_messages, images


def encode_requests(processor, requests: list[Request], images_kwargs: dict[str, Any]):
    """Render ``requests`` with the processor's chat template and tokenize them as one batch.

    Padding goes on the side the tokenizer's ``padding_side`` names (left for
    generation). Images are passed per request, in message order.

    Returns
    -------
    tuple of (BatchFeature, list of int, list of int)
        Model inputs, prompt length of each request in tokens (image tokens
        expanded, padding excluded), and image count of each request.
    """
    texts = []
    images = []
    for request in requests:
        messages, request_images = split_images(request.messages)
        try:
            texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        except (jinja2.TemplateError, ValueError) as error:
            raise ModelConfigError(
                f"the chat template rejected the messages of request {request.image_id!r}: {error}"
            ) from error
        images.append(request_images)

    # Templates that write the BOS token themselves must not get a second one from the tokenizer.
    bos = processor.tokenizer.bos_token
    add_special_tokens = not (bos and all(text.startswith(bos) for text in texts))
    call_kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
    if any(images):
        call_kwargs["images"] = images
    inputs = processor(**call_kwargs, add_special_tokens=add_special_tokens, **images_kwargs)
    prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
    return inputs, prompt_lengths, [len(request_images) for request_images in images]
