"""Random-weight builds of the real Z-Image-Turbo architecture.

`full` has the exact configs of the released model (Qwen3-4B text encoder, 6.15B DiT, FLUX VAE): speed and memory do not
depend on weight values, so it is what benchmarks use when weights cannot be downloaded. `tiny` keeps the same classes
at toy sizes so the whole service runs on a CPU in tests. Images from either are noise.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from deployments.config import RandomArch

logger = logging.getLogger(__name__)

# Qwen-style chat template, as the real tokenizer applies it (the pipeline calls apply_chat_template).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
_WORDS = (
    "a an the of on in at to with and or for from by is are realistic photo photograph red blue green yellow "
    "black white sports car mountain road sunset sunrise cat dog city street night day portrait of woman man "
    "child tree forest river sea ocean beach sky cloud clouds snow rain light dark bright cinematic painting oil "
    "watercolor sketch style detailed high quality 4k 8k close-up wide shot landscape building house old new "
    "small large big beautiful , . ! ? : ;"
).split()

TINY_VOCAB = 512


def build_stand_in_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Qwen's special tokens and chat template over a small vocabulary that still covers any text: known words keep
    their own ids (~25 tokens for the article's prompt); anything else (other words, Chinese, emoji) falls back to its
    UTF-8 bytes, one id per byte. Different prompts therefore give different token ids in any language, as with the
    real tokenizer (a word-level vocabulary mapped every unknown word, e.g. a whole Chinese prompt, to one [UNK])."""
    pieces = SPECIAL_TOKENS + sorted(set(_WORDS))
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    assert len(pieces) + len(byte_tokens) <= vocab_size, (len(pieces) + len(byte_tokens), vocab_size)
    # Unigram picks whole words where it can (score -1 per piece); byte_fallback spells the rest byte by byte
    vocab = [(t, 0.0) for t in SPECIAL_TOKENS] + [(w, -1.0) for w in pieces[len(SPECIAL_TOKENS) :]]
    vocab += [(b, -10.0) for b in byte_tokens]
    core = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("[UNK]"), byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.ByteFallback()  # bytes decode back to text (whitespace is not kept: logs only)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="right",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def text_encoder_config(arch: RandomArch) -> Qwen3Config:
    if arch is RandomArch.FULL:
        return Qwen3Config(
            vocab_size=151936,
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            rope_theta=1_000_000.0,
            max_position_embeddings=40960,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
        )
    return Qwen3Config(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )


def transformer_config(arch: RandomArch) -> dict:
    """Z-Image-Turbo's released DiT config (6.15B parameters); `tiny` shrinks its sizes, same structure."""
    full = dict(
        dim=3840,
        n_layers=30,
        n_refiner_layers=2,
        n_heads=30,
        n_kv_heads=30,
        cap_feat_dim=2560,
        in_channels=16,
        axes_dims=[32, 48, 48],
        axes_lens=[1536, 512, 512],
        rope_theta=256.0,
    )
    if arch is RandomArch.FULL:
        return full
    tiny = dict(dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32)
    return {**full, **tiny, "axes_dims": [8, 12, 12], "axes_lens": [256, 128, 128]}


def vae_config(arch: RandomArch) -> dict:
    full = arch is RandomArch.FULL
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512] if full else [8, 8, 16, 16],
        layers_per_block=2 if full else 1,
        norm_num_groups=32 if full else 4,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        sample_size=1024,
    )


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_random_pipeline(arch: RandomArch, device: str, dtype: torch.dtype, seed: int = 0) -> ZImagePipeline:
    """Construct the pipeline with random weights directly on `device` in `dtype` (seconds for `full` on a GPU)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        text_encoder = Qwen3Model(text_encoder_config(arch)).eval()
        transformer = ZImageTransformer2DModel(**transformer_config(arch)).eval()
        vae = AutoencoderKL(**vae_config(arch)).eval()
    tokenizer = build_stand_in_tokenizer(text_encoder_config(arch).vocab_size)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    logger.info(
        "built random:%s pipeline on %s/%s in %.2fs (DiT %.2fB params, text encoder %.2fB)",
        arch.value,
        device,
        dtype,
        time.perf_counter() - start,
        sum(p.numel() for p in transformer.parameters()) / 1e9,
        sum(p.numel() for p in text_encoder.parameters()) / 1e9,
    )
    return pipe
