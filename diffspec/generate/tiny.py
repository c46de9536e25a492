"""Tiny random-weight pipelines for tests and benchmarks, built offline from configs.

Like diffusers' own ``get_dummy_components()``: every component is built from a small config
with a fixed seed, the tokenizers are written offline (a byte-level CLIP BPE vocabulary with no
merges, a character-level T5 unigram vocabulary), and the pipeline is saved with
``save_pretrained(safe_serialization=True)`` so that tests load it back through the same
``from_pretrained`` path users take. The images are noise, but seeded noise: everything that
decides pixels (schedulers, generators, batching, ControlNet, LoRA, prompt weighting) runs
for real.

Sizes: the VAEs downsample by 8 like the real ones (4 blocks), so a 64x64 image is an 8x8
latent and a tiny SD pipeline runs 20 steps in a few hundredths of a second per image on a CPU.

For ``mode="controlnet"`` the base pipeline is saved to ``folder`` and a ControlNet to
``folder / "controlnet"`` (see :func:`tiny_controlnet_path`); its zero-initialised output
layers are given random weights so that the control image really changes the output.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffspec.errors import GenerationError
from diffspec.tables.families import pipeline_class_name

__all__ = ["build_tiny", "tiny_controlnet_path", "TINY_SUPPORTED", "clip_tokenizer", "t5_tokenizer"]

#: (family, mode) pairs build_tiny can make.
TINY_SUPPORTED: tuple[tuple[str, str], ...] = tuple(
    (family, mode)
    for family in ("sd", "sdxl", "sd3", "flux", "kandinsky")
    for mode in ("txt2img", "img2img", "inpaint", "controlnet")
    if not (family == "kandinsky" and mode == "controlnet")
)

CONTROLNET_SUBFOLDER = "controlnet"

_TEXT_HIDDEN = 32
_VOCAB_SIZE = 1000


def tiny_controlnet_path(folder: str | Path) -> Path:
    """Where :func:`build_tiny` puts the ControlNet of a ``controlnet`` tiny model."""
    return Path(folder) / CONTROLNET_SUBFOLDER


# --------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte → printable character map, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


def clip_tokenizer():
    """A CLIP BPE tokenizer with a byte-level vocabulary and no merges (so every word is
    spelled out byte by byte), ids 0..513 with the specials last, like real CLIP."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def clip_token_ids(tokenizer) -> tuple[int, int]:
    return tokenizer.bos_token_id, tokenizer.eos_token_id


def t5_tokenizer():
    """A T5 (unigram) tokenizer with a character-level vocabulary, built offline."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()[]-+=/_&%$#@*<>"
    for ch in alphabet:
        pieces.append(("▁" + ch, -3.0))
    for ch in alphabet:
        pieces.append((ch, -4.0))
    return T5Tokenizer(vocab=pieces, extra_ids=0, additional_special_tokens=[], model_max_length=512)


# --------------------------------------------------------------------------- components


def _seed(seed: int, offset: int) -> None:
    torch.manual_seed(seed * 1000 + offset)


def _clip_text_config(tokenizer, projection_dim: int = _TEXT_HIDDEN, hidden: int = _TEXT_HIDDEN):
    from transformers import CLIPTextConfig

    bos, eos = clip_token_ids(tokenizer)
    return CLIPTextConfig(
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=_VOCAB_SIZE,
        hidden_act="gelu",
        projection_dim=projection_dim,
        max_position_embeddings=77,
    )


def _t5_encoder(tokenizer, seed: int, offset: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=max(_VOCAB_SIZE, len(tokenizer)),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    _seed(seed, offset)
    return T5EncoderModel(config).eval()


def _vae(seed: int, latent_channels: int = 4, flux_like: bool = False):
    """An AutoencoderKL that downsamples by 8 (four blocks), like the real ones."""
    from diffusers import AutoencoderKL

    _seed(seed, 1)
    kwargs = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=64,
        force_upcast=False,  # float32 on CPU anyway; avoids diffusers' fp16-upcast path
    )
    if flux_like:
        kwargs.update(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return AutoencoderKL(**kwargs)


def _sd_unet(seed: int, in_channels: int):
    from diffusers import UNet2DConditionModel

    _seed(seed, 2)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def _sdxl_unet(seed: int, in_channels: int):
    from diffusers import UNet2DConditionModel

    _seed(seed, 2)
    time_dim = 8
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        # six time ids (original size, crop, target size) + the pooled text embedding
        projection_class_embeddings_input_dim=time_dim * 6 + _TEXT_HIDDEN,
        cross_attention_dim=2 * _TEXT_HIDDEN,
        norm_num_groups=8,
    )


def _randomize_zero_params(module: torch.nn.Module, seed: int) -> None:
    """Give zero-initialised tensors (ControlNet zero convs) small random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.numel() and not torch.any(param):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _sd_scheduler():
    from diffusers import PNDMScheduler

    # Stable Diffusion 1.5's scheduler config
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    # SDXL base's scheduler config
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )


def _sd_components(seed: int, mode: str) -> tuple[dict, torch.nn.Module | None]:
    from diffusers import ControlNetModel
    from transformers import CLIPTextModel

    tokenizer = clip_tokenizer()
    _seed(seed, 3)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer)).eval()
    unet = _sd_unet(seed, 9 if mode == "inpaint" else 4)
    components = dict(
        unet=unet,
        vae=_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    controlnet = None
    if mode == "controlnet":
        _seed(seed, 4)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
        _randomize_zero_params(controlnet, seed + 4)
    return components, controlnet


def _sdxl_components(seed: int, mode: str) -> tuple[dict, torch.nn.Module | None]:
    from diffusers import ControlNetModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer()
    tokenizer_2 = clip_tokenizer()
    _seed(seed, 3)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer)).eval()
    _seed(seed, 5)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer_2)).eval()
    unet = _sdxl_unet(seed, 9 if mode == "inpaint" else 4)
    components = dict(
        unet=unet,
        vae=_vae(seed),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=_sdxl_scheduler(),
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
    )
    if mode == "inpaint":  # saved as StableDiffusionXLInpaintPipeline
        components["requires_aesthetics_score"] = False
    controlnet = None
    if mode == "controlnet":
        _seed(seed, 4)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
        _randomize_zero_params(controlnet, seed + 4)
    return components, controlnet


def _flow_scheduler(**kwargs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **kwargs)


def _sd3_components(seed: int, mode: str) -> tuple[dict, torch.nn.Module | None]:
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    latent = 16
    dims = dict(
        sample_size=8,
        patch_size=1,
        in_channels=latent,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=_TEXT_HIDDEN,
        caption_projection_dim=32,
        pooled_projection_dim=2 * _TEXT_HIDDEN,
        out_channels=latent,
    )
    _seed(seed, 2)
    transformer = SD3Transformer2DModel(num_layers=2, **dims)
    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    _seed(seed, 3)
    text_encoder = CLIPTextModelWithProjection(_clip_text_config(tokenizer)).eval()
    _seed(seed, 5)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer_2)).eval()
    text_encoder_3 = _t5_encoder(tokenizer_3, seed, 6)
    components = dict(
        transformer=transformer,
        vae=_vae(seed, latent_channels=latent, flux_like=True),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        text_encoder_3=text_encoder_3,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        tokenizer_3=tokenizer_3,
        scheduler=_flow_scheduler(shift=3.0),
        image_encoder=None,
        feature_extractor=None,
    )
    controlnet = None
    if mode == "controlnet":
        _seed(seed, 4)
        controlnet = SD3ControlNetModel(num_layers=1, **dims)
        _randomize_zero_params(controlnet, seed + 4)
    return components, controlnet


def _flux_components(seed: int, mode: str) -> tuple[dict, torch.nn.Module | None]:
    from diffusers import FluxControlNetModel, FluxTransformer2DModel
    from transformers import CLIPTextModel

    latent = 16
    dims = dict(
        patch_size=1,
        in_channels=latent * 4,  # latents are packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_HIDDEN,
        pooled_projection_dim=_TEXT_HIDDEN,
        axes_dims_rope=[4, 4, 8],
    )
    _seed(seed, 2)
    transformer = FluxTransformer2DModel(**dims)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    _seed(seed, 3)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer)).eval()
    text_encoder_2 = _t5_encoder(tokenizer_2, seed, 6)
    components = dict(
        transformer=transformer,
        vae=_vae(seed, latent_channels=latent, flux_like=True),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=_flow_scheduler(
            shift=1.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        image_encoder=None,
        feature_extractor=None,
    )
    controlnet = None
    if mode == "controlnet":
        _seed(seed, 4)
        controlnet = FluxControlNetModel(**dims)
        _randomize_zero_params(controlnet, seed + 4)
    return components, controlnet


def _kandinsky_components(seed: int, mode: str) -> tuple[dict, None]:
    from diffusers import DDPMScheduler, PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, VQModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    hidden = _TEXT_HIDDEN
    _seed(seed, 2)
    unet = UNet2DConditionModel(
        in_channels=9 if mode == "inpaint" else 4,
        out_channels=8,  # mean and variance
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=hidden,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=hidden,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        sample_size=8,
    )
    _seed(seed, 1)
    movq = VQModel(
        block_out_channels=[32, 32, 32, 32],  # downsamples by 8, like the real MoVQ (SpatialNorm needs 32s)
        down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )
    scheduler = DDPMScheduler(  # Kandinsky 2.2 decoder's scheduler config
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="epsilon",
        thresholding=False,
        variance_type="learned_range",
        timestep_spacing="leading",
        steps_offset=1,
    )
    _seed(seed, 7)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=hidden, num_layers=1)
    # clip_std starts at zero, which would make every image embedding zero
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))
    tokenizer = clip_tokenizer()
    _seed(seed, 3)
    text_encoder = CLIPTextModelWithProjection(_clip_text_config(tokenizer)).eval()
    _seed(seed, 8)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=hidden,
            image_size=32,
            projection_dim=hidden,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=16,
        )
    ).eval()
    image_processor = CLIPImageProcessor(
        crop_size=32,
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
        size=32,
    )
    prior_scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    components = dict(
        unet=unet,
        scheduler=scheduler,
        movq=movq,
        prior_prior=prior,
        prior_image_encoder=image_encoder,
        prior_text_encoder=text_encoder,
        prior_tokenizer=tokenizer,
        prior_scheduler=prior_scheduler,
        prior_image_processor=image_processor,
    )
    return components, None


_BUILDERS = {
    "sd": _sd_components,
    "sdxl": _sdxl_components,
    "sd3": _sd3_components,
    "flux": _flux_components,
    "kandinsky": _kandinsky_components,
}


def build_tiny(family: str, mode: str, folder: str | Path, seed: int = 0) -> Path:
    """Build a tiny random-weight pipeline for (family, mode), save it to ``folder`` and return it.

    The saved pipeline class is the one a real checkpoint of that kind has: the txt2img class
    (e.g. ``StableDiffusionPipeline``) for txt2img, img2img and controlnet, an inpainting class
    with a 9-channel UNet for sd/sdxl inpaint, and the combined prior+decoder pipelines for
    kandinsky. For ``controlnet`` a ControlNet is also saved to ``folder / "controlnet"``.
    Loading picks the pipeline class from (family, mode), as it does for user models.
    """
    if (family, mode) not in TINY_SUPPORTED:
        pipeline_class_name(family, mode)  # raises the user-facing error when unsupported
        raise GenerationError(f"build_tiny cannot build family {family!r} mode {mode!r}")
    from diffspec.generate.loading import quiet_progress

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        _build(family, mode, folder, seed)
    return folder


def _build(family: str, mode: str, folder: Path, seed: int) -> None:
    import diffusers

    components, controlnet = _BUILDERS[family](seed, mode)
    save_mode = "inpaint" if mode == "inpaint" else "txt2img"
    if family in ("sd3", "flux"):
        save_mode = "txt2img"  # their inpaint pipelines use the plain transformer
    pipeline_cls = getattr(diffusers, pipeline_class_name(family, save_mode))
    pipe = pipeline_cls(**components)
    pipe.save_pretrained(folder, safe_serialization=True)
    if controlnet is not None:
        controlnet.save_pretrained(tiny_controlnet_path(folder), safe_serialization=True)
    (folder / "diffspec_tiny.json").write_text(
        json.dumps({"family": family, "mode": mode, "seed": seed}, sort_keys=True) + "\n", encoding="utf-8"
    )
