"""Build tiny random Qwen2-VL, MiniCPM-V 4.6 and Pixtral checkpoints for offline tests and benchmarks.

Each checkpoint uses the official transformers model, processor and image
processor classes with a few thousand random weights, a byte-level BPE
tokenizer trained here on a few sentences, and a chat template. They are saved
with ``save_pretrained`` so the product loads them with the same
``from_pretrained`` code as real checkpoints::

    python -m ecdna_exp.models.tiny --out .tiny-models
    python -m ecdna_exp model=qwen checkpoint_dir=.tiny-models

Their answers are random strings, so they test the plumbing, not counting.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

FAMILIES = ("qwen", "minicpm", "pixtral")

#: Context length of every tiny model in tokens: room for a 3-shot prompt at the tiny image size.
TINY_CONTEXT_LENGTH = 1024

#: Pixels per image side after resizing (Qwen2-VL: 56 x 56 = 4 image tokens, Pixtral: 64 x 64 = 20 tokens).
TINY_IMAGE_SIDE = {"qwen": 56, "minicpm": 56, "pixtral": 64}

_TRAINING_TEXT = (
    "You are a cytogeneticist counting extrachromosomal DNA in DAPI-stained metaphase spreads.",
    "How many ecDNA are in this image? Answer with a single number.",
    "Count the small round DAPI foci outside the chromosomes.",
    "There are 0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 30 40 50 ecDNA in this image.",
)

_TEXT_SIZE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}

#: Standard deviation of the random weights. Larger than the usual 0.02 so that answers depend on
#: the image and the prompt, which makes batched-versus-single comparisons meaningful.
TINY_INIT_STD = 0.5


def _chat_template(turn_start: str, turn_end: str, image_placeholder: str) -> str:
    """Return a ChatML-style Jinja template that writes ``image_placeholder`` where each image part is."""
    return (
        "{% for message in messages %}"
        f"{turn_start}{{{{ message['role'] }}}}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{image_placeholder}"
        "{% else %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        f"{turn_end}\n"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{turn_start}assistant\n{{% endif %}}"
    )


_PIXTRAL_TEMPLATE = (
    "<s>{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% for part in parts %}{{ part['text'] }}{% endfor %}</s>"
    "{% else %}[INST]{% for part in parts %}"
    "{% if part['type'] == 'image' %}[IMG]{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}[/INST]{% endif %}"
    "{% endfor %}"
)


def build_tokenizer(
    special_tokens: list[str], chat_template: str, vocab_size: int = 400, **token_roles
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a few sentences and wrap it for transformers.

    Parameters
    ----------
    special_tokens : list of str
        Tokens that are never split. They get the first ids, in this order.
    chat_template : str
        Jinja chat template stored with the tokenizer.
    vocab_size : int
        Vocabulary size including the 256 byte tokens and ``special_tokens``.
    **token_roles
        ``bos_token``, ``eos_token``, ``pad_token``, ``unk_token`` and
        ``extra_special_tokens`` (a dict of named tokens such as ``image_token``).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=chat_template, **token_roles)


def _save(model, processor, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_qwen(out_dir: Path) -> Path:
    """Save a tiny random ``Qwen2VLForConditionalGeneration`` with instruct-style sampling defaults to ``out_dir``."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    template = _chat_template("<|im_start|>", "<|im_end|>", "<|vision_start|><|image_pad|><|vision_end|>")
    tokenizer = build_tokenizer(special, template, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    pixels = TINY_IMAGE_SIDE["qwen"] ** 2
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=template,
    )
    config = Qwen2VLConfig(
        text_config={
            **_TEXT_SIZE,
            "vocab_size": len(tokenizer),
            "num_key_value_heads": 1,
            "initializer_range": TINY_INIT_STD,
            "max_position_embeddings": TINY_CONTEXT_LENGTH,
            # mrope_section splits head_dim / 2 = 8 rotary frequencies over (time, height, width).
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "initializer_range": TINY_INIT_STD,
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config)
    # Sampling defaults of the kind instruct checkpoints ship; top_k=1 would make any sampling greedy.
    model.generation_config.update(
        do_sample=True, temperature=0.01, top_k=1, top_p=0.001, repetition_penalty=1.05
    )
    return _save(model, processor, out_dir)


def build_minicpm(out_dir: Path) -> Path:
    """Save a tiny random ``MiniCPMV4_6ForConditionalGeneration`` (Qwen3.5 text model) to ``out_dir``."""
    from transformers import (
        MiniCPMV4_6Config,
        MiniCPMV4_6ForConditionalGeneration,
        MiniCPMV4_6ImageProcessor,
        MiniCPMV4_6Processor,
        MiniCPMV4_6VideoProcessor,
    )

    named = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "image_start_token": "<image>",
        "image_end_token": "</image>",
        "slice_start_token": "<slice>",
        "slice_end_token": "</slice>",
        "image_id_start_token": "<image_id>",
        "image_id_end_token": "</image_id>",
    }
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()]
    template = _chat_template("<|im_start|>", "<|im_end|>", "<|image_pad|>\n")
    tokenizer = build_tokenizer(
        special, template, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=named
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    side = TINY_IMAGE_SIDE["minicpm"]
    # Slicing off: every image becomes one 56 x 56 view = 16 patches = 1 token after the 16x merge.
    image_kwargs = {"scale_resolution": side, "patch_size": 14, "slice_mode": False}
    processor = MiniCPMV4_6Processor(
        image_processor=MiniCPMV4_6ImageProcessor(**image_kwargs),
        video_processor=MiniCPMV4_6VideoProcessor(**image_kwargs),
        tokenizer=tokenizer,
        chat_template=template,
    )
    config = MiniCPMV4_6Config(
        text_config={
            "model_type": "qwen3_5_text",
            **_TEXT_SIZE,
            "vocab_size": len(tokenizer),
            "num_key_value_heads": 1,
            "initializer_range": TINY_INIT_STD,
            "head_dim": 16,
            "linear_key_head_dim": 8,
            "linear_value_head_dim": 8,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 2,
            "layer_types": ["linear_attention", "full_attention"],
            "max_position_embeddings": TINY_CONTEXT_LENGTH,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "initializer_range": TINY_INIT_STD,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": side,
            "patch_size": 14,
        },
        insert_layer_id=0,
        image_size=side,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
    )
    return _save(MiniCPMV4_6ForConditionalGeneration(config), processor, out_dir)


def build_pixtral(out_dir: Path) -> Path:
    """Save a tiny random Pixtral (``LlavaForConditionalGeneration``, Pixtral vision, Mistral text) to ``out_dir``."""
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        PixtralImageProcessor,
        PixtralProcessor,
    )

    special = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "<pad>"]
    tokenizer = build_tokenizer(
        special, _PIXTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    side = TINY_IMAGE_SIDE["pixtral"]
    image_processor = PixtralImageProcessor(
        size={"longest_edge": side}, patch_size={"height": 16, "width": 16}
    )
    processor = PixtralProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=16,
        spatial_merge_size=1,
        chat_template=_PIXTRAL_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config={
            "model_type": "pixtral",
            "initializer_range": TINY_INIT_STD,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "head_dim": 16,
            "image_size": side,
            "patch_size": 16,
        },
        text_config={
            "model_type": "mistral",
            **_TEXT_SIZE,
            "vocab_size": len(tokenizer),
            "num_key_value_heads": 1,
            "initializer_range": TINY_INIT_STD,
            "head_dim": 16,
            "sliding_window": None,
            "max_position_embeddings": TINY_CONTEXT_LENGTH,
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
            "pad_token_id": ids["<pad>"],
        },
        # Pixtral-12B's settings: last vision layer, every patch kept, GELU projector with bias.
        image_token_index=ids["[IMG]"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
    )
    return _save(LlavaForConditionalGeneration(config), processor, out_dir)


BUILDERS = {"qwen": build_qwen, "minicpm": build_minicpm, "pixtral": build_pixtral}


def build_tiny_models(out_root: str | Path, families=FAMILIES, seed: int = 0) -> dict[str, Path]:
    """Build the tiny checkpoints of ``families`` into ``out_root / family``.

    Weights are drawn from a generator seeded with ``seed`` without touching
    the caller's random state, so two builds are identical.

    Returns
    -------
    dict of str to Path
        Checkpoint folder of each family.
    """
    out_root = Path(out_root)
    folders = {}
    for family in families:
        if family not in BUILDERS:
            raise ValueError(f"unknown tiny model family {family!r}; choose from {', '.join(BUILDERS)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            folders[family] = BUILDERS[family](out_root / family)
        log.info("built tiny %s checkpoint in %s", family, folders[family])
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(".tiny-models"), help="output folder (default .tiny-models)"
    )
    parser.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        default=list(FAMILIES),
        help="families to build (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_tiny_models(args.out, args.families, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
