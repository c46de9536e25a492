"""Tiny random-weight models for the stages, built offline from configs (like diffspec.generate.tiny).

Three builders, each saving with ``save_pretrained(safe_serialization=True)`` to a folder that
then loads through the same ``from_pretrained`` path a real checkpoint takes:

- :func:`build_tiny_lm`: a Gemma 3 causal LM (the architecture of ``google/gemma-3-1b-it``) with
  2 layers and hidden size 32, a byte-level BPE tokenizer trained offline on a few sentences, a
  Gemma-style chat template (``<start_of_turn>user ... <end_of_turn>``) and a generation config
  that stops at ``<end_of_turn>`` as the real one does;
- :func:`build_tiny_grounding_dino`: ``GroundingDinoForObjectDetection`` with a tiny Swin image
  backbone, a tiny BERT text backbone (the tokenizer is a BERT WordPiece vocabulary written
  offline), 2 encoder and 2 decoder layers, saved with its ``GroundingDinoProcessor``;
- :func:`build_tiny_sam`: ``SamModel`` with a 2-layer ViT at 64 px, saved with its ``SamProcessor``.

The image processors are built as the PIL-backend classes (``...ImageProcessorPil``) and saved
under their base names, as real checkpoints are; transformers 5 picks the torchvision backend
when torchvision is installed, so the stages load with ``backend="pil"`` (torchvision is not a
dependency of diffspec, and the two backends do not give identical pixels).

Build time: about a second each on a CPU; tests cache the folders per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffspec.stages.hfload import quiet_loading

__all__ = [
    "GEMMA_CHAT_TEMPLATE",
    "TINY_DINO_IMAGE_SIZE",
    "TINY_SAM_IMAGE_SIZE",
    "TINY_CLIP_IMAGE_SIZE",
    "build_tiny_clip",
    "build_tiny_grounding_dino",
    "build_tiny_lm",
    "build_tiny_sam",
]

#: Grounding DINO's processor resizes the shortest edge to this (the real one: 800).
TINY_DINO_IMAGE_SIZE = 96  # the 4th feature level (stride 64) is then >= 2 pixels, as GroupNorm needs
#: SAM's processor resizes the longest edge to this and pads to a square (the real one: 1024).
TINY_SAM_IMAGE_SIZE = 64

#: Gemma's chat template in the form ``google/gemma-3-1b-it`` ships it (text-only messages).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

LM_HEAD_STD = 0.4

_LM_CORPUS = (
    "Almond Horchata with cinnamon and crushed ice.",
    "Fruit Salad with Fennel, Watercress, and Smoked Salt.",
    "Tuscan Porterhouse Steak with Red Wine-Peppercorn Jus.",
    "A bowl of creamy tomato soup with fresh basil and croutons.",
    "Grilled salmon on a bed of lemon rice, garnished with dill.",
    "Write one short caption for a photo of a dish. Answer with the caption only.",
)


def _seed(seed: int, offset: int) -> None:
    torch.manual_seed(seed * 1000 + offset)


def _write_marker(folder: Path, kind: str, seed: int) -> None:
    (folder / "diffspec_tiny.json").write_text(
        json.dumps({"kind": kind, "seed": seed}, sort_keys=True) + "\n", encoding="utf-8"
    )


# --------------------------------------------------------------------------- causal LM


def lm_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style) trained offline, with Gemma's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is spellable
        show_progress=False,
    )
    tok.train_from_iterator(list(_LM_CORPUS), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        padding_side="left",
        model_max_length=512,
    )
    fast.chat_template = GEMMA_CHAT_TEMPLATE
    return fast


def build_tiny_lm(folder: str | Path, seed: int = 0, chat_template: bool = True) -> Path:
    """A tiny ``Gemma3ForCausalLM`` + tokenizer (+ chat template unless ``chat_template=False``)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = lm_tokenizer()
    if not chat_template:
        tokenizer.chat_template = None
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=512,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end_of_turn],
        tie_word_embeddings=False,
    )
    _seed(seed, 1)
    with quiet_loading():
        model = Gemma3ForCausalLM(config).eval()
        # At init std 0.02 the logits are near-uniform (and tied embeddings make a random model
        # repeat its last token forever); an untied output layer at a larger scale gives peaked
        # but varied distributions, so the sampled text depends visibly on seed and temperature.
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=[tokenizer.eos_token_id, end_of_turn],
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    _write_marker(folder, "causal-lm", seed)
    return folder


# --------------------------------------------------------------------------- Grounding DINO


def _bert_vocab() -> dict[str, int]:
    """A WordPiece vocabulary: BERT's specials, lower-case letters, digits, punctuation, a few words."""
    words = ["a", "an", "the", "photo", "of", "cat", "dog", "apple", "asparagus", "plum", "fruit", "object"]
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-_/&")
    pieces += chars + ["##" + c for c in chars] + [w for w in words if w not in chars]
    return {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}


def build_tiny_grounding_dino(folder: str | Path, seed: int = 0) -> Path:
    """A tiny ``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor`` (PIL backend)."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab=_bert_vocab(), do_lower_case=True, model_max_length=256)
    backbone = SwinConfig(
        image_size=TINY_DINO_IMAGE_SIZE,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=256,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=20,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=256,
        disable_custom_kernels=True,
    )
    image_processor = GroundingDinoImageProcessorPil(
        size={"shortest_edge": TINY_DINO_IMAGE_SIZE, "longest_edge": TINY_DINO_IMAGE_SIZE * 2}
    )
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    _seed(seed, 2)
    with quiet_loading():
        model = GroundingDinoForObjectDetection(config).eval()
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
    _write_marker(folder, "grounding-dino", seed)
    return folder


# --------------------------------------------------------------------------- SAM


def build_tiny_sam(folder: str | Path, seed: int = 0) -> Path:
    """A tiny ``SamModel`` + ``SamProcessor`` (PIL backend) working at 64 px."""
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size, patch, channels = TINY_SAM_IMAGE_SIZE, 8, 16
    vision = SamVisionConfig(
        hidden_size=32,
        output_channels=channels,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=size,
        patch_size=patch,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=channels // 2,
        mlp_dim=64,
        initializer_range=0.02,
    )
    prompt = SamPromptEncoderConfig(hidden_size=channels, image_size=size, patch_size=patch, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=channels,
        mlp_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        iou_head_hidden_dim=16,
    )
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    image_processor = SamImageProcessorPil(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        mask_size={"longest_edge": size // 4},
        mask_pad_size={"height": size // 4, "width": size // 4},
    )
    processor = SamProcessor(image_processor=image_processor)
    _seed(seed, 3)
    with quiet_loading():
        model = SamModel(config).eval()
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
    _write_marker(folder, "sam", seed)
    return folder


# --------------------------------------------------------------------------- CLIP

#: CLIP's image processor resizes and centre-crops to this (the real ViT-B/32: 224).
TINY_CLIP_IMAGE_SIZE = 32


def _clip_vocab() -> dict[str, int]:
    """A byte-level BPE vocabulary as CLIP's: every byte symbol alone and ending a word (``</w>``),
    and the start / end tokens; with no merges, every word tokenises to its letters."""
    from tokenizers import pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    pieces = ["<|startoftext|>", "<|endoftext|>"] + symbols + [s + "</w>" for s in symbols]
    return {piece: i for i, piece in enumerate(pieces)}


def build_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """A tiny ``CLIPModel`` (2-layer ViT at 32 px, 2-layer text transformer) with a
    ``CLIPTokenizer`` written offline and the PIL ``CLIPImageProcessor``, saved as a checkpoint."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": TINY_CLIP_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_CLIP_IMAGE_SIZE},
        crop_size={"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE},
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    _seed(seed, 4)
    with quiet_loading():
        model = CLIPModel(config).eval()
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
    _write_marker(folder, "clip", seed)
    return folder
