"""How much of an SDXL-Turbo image is text encoding: FLOPs of SDXL's real architecture, counted.

    python bench/sdxl_flops.py

Builds SDXL's UNet, VAE and both text encoders from their published configs on PyTorch's
``meta`` device (shapes only: no weights, no memory, no download) and counts one forward of each
with ``torch.utils.flop_counter.FlopCounterMode``: the text encoders on one 77-token prompt, the
UNet for one image at 512x512 (a 64x64 latent, SDXL-Turbo's size), the VAE decoder for it. It
prints the share text encoding takes of an image in a loop that encodes every prompt again
(SDXL-Turbo: 1 step, guidance 0), which bounds what encoding each prompt once can save
(``bench/apply_overhead.py --case few`` measures it on the tiny model).
"""

from __future__ import annotations


def main() -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    # stabilityai/sdxl-turbo: unet/config.json, vae/config.json, text_encoder(_2)/config.json
    unet_cfg = dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=1024,
        )
        clip_l = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=49408
            )
        )
        clip_g = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=20,
                vocab_size=49408,
                projection_dim=1280,
            )
        )

    def flops(fn: object) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()  # type: ignore[operator]
        return int(counter.get_total_flops())

    meta = {"device": "meta"}
    ids = torch.zeros(1, 77, dtype=torch.long, **meta)
    latent = torch.zeros(1, 4, 64, 64, **meta)
    text = flops(lambda: clip_l(ids, output_hidden_states=True)) + flops(lambda: clip_g(ids, output_hidden_states=True))
    step = flops(
        lambda: unet(
            latent,
            torch.tensor([999], **meta),
            encoder_hidden_states=torch.zeros(1, 77, 2048, **meta),
            added_cond_kwargs={"text_embeds": torch.zeros(1, 1280, **meta), "time_ids": torch.zeros(1, 6, **meta)},
        )
    )
    decode = flops(lambda: vae.decode(latent))
    print(f"SDXL text encoders, one prompt:        {text / 1e9:8.1f} GFLOPs")
    print(f"SDXL UNet, one image, one step, 512px: {step / 1e9:8.1f} GFLOPs")
    print(f"VAE decoder, one image, 512px:         {decode / 1e9:8.1f} GFLOPs")
    print(f"encoder / UNet step = {text / step:.3f}")
    for steps in (1, 4):
        share = text / (text + steps * step + decode)
        print(f"text encoding's share of an image at {steps} step(s), guidance 0: {100 * share:.1f}%")


if __name__ == "__main__":
    main()
