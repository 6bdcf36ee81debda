"""The random models' stand-in tokenizer (deployments/pipeline/random_model.py) covers any text: a Chinese prompt is
spelled in UTF-8 bytes instead of collapsing to one [UNK], so different Chinese prompts make different images on the
CPU demo, and the same prompt still makes the same image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.config import RandomArch
from deployments.pipeline.random_model import (
    SPECIAL_TOKENS,
    TINY_VOCAB,
    build_random_pipeline,
    build_stand_in_tokenizer,
    text_encoder_config,
)
from deployments.pipeline.runner import Shape, ZImageRunner

CAT, DOG = "一只猫", "一条狗"


@pytest.fixture(scope="module")
def tok():
    return build_stand_in_tokenizer(TINY_VOCAB)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("arch", list(RandomArch))
def test_vocabulary_fits_the_text_encoders_embedding_table(arch):
    vocab_size = text_encoder_config(arch).vocab_size
    tok = build_stand_in_tokenizer(vocab_size)
    assert len(tok) <= vocab_size
    assert max(_ids(tok, "a red car 一只猫 🐱 ÿ\x00")) < vocab_size


def test_any_text_gets_distinct_ids_and_known_words_keep_theirs(tok):
    assert _ids(tok, CAT) != _ids(tok, DOG)
    assert len(_ids(tok, CAT)) == len(CAT.encode("utf-8"))  # one id per byte
    assert tok.unk_token_id not in _ids(tok, CAT) + _ids(tok, "zebra 🦓 crème brûlée")
    words = "a red sports car on a mountain road at sunset".split()
    assert tok.convert_ids_to_tokens(_ids(tok, " ".join(words))) == words  # known words: one token each
    assert tok.decode(_ids(tok, f"cat {CAT}")).replace(" ", "") == f"cat{CAT}"  # bytes decode back to the text
    assert _ids(tok, "a cat") == _ids(tok, "a cat")


def test_special_tokens_and_chat_template_are_qwens(tok):
    assert tok.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == SPECIAL_TOKENS
    ids = tok.apply_chat_template([{"role": "user", "content": CAT}], tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|im_start|>" and tokens.count("<|im_start|>") == 2 and tokens.count("<|im_end|>") == 1
    assert (tok.pad_token, tok.eos_token, tok.padding_side) == ("<|endoftext|>", "<|im_end|>", "right")


def test_different_chinese_prompts_make_different_images_and_the_same_prompt_the_same():
    runner = ZImageRunner(build_random_pipeline(RandomArch.TINY, "cpu", torch.float32))
    cat, dog, cat_again = runner.encode([CAT, DOG, CAT])
    assert cat.shape != dog.shape or not torch.equal(cat, dog)
    torch.testing.assert_close(cat, cat_again, rtol=0, atol=0)
    shape = Shape(128, 128, 2)
    images = [runner.run([p], [7], shape).images[0] for p in (CAT, DOG, CAT)]
    assert not np.array_equal(images[0], images[1]), "two Chinese prompts made byte-identical images"
    assert np.array_equal(images[0], images[2])
