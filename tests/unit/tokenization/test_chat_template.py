import pytest

from epp.tokenization.chat_template import ChatTemplateError, apply_chat_template


def test_chatml_rendering() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert apply_chat_template(messages, add_generation_prompt=False).endswith("Hi<|im_end|>\n")


def test_content_parts() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "b"},
            ],
        }
    ]
    assert (
        apply_chat_template(messages, add_generation_prompt=False)
        == "<|im_start|>user\na\n<image_url>\nb<|im_end|>\n"
    )


def test_none_content_is_empty() -> None:
    assert (
        apply_chat_template([{"role": "assistant", "content": None}], False)
        == "<|im_start|>assistant\n<|im_end|>\n"
    )


@pytest.mark.parametrize("messages", [[{"content": "x"}], ["x"], [{"role": "user", "content": 3}]])
def test_bad_messages(messages: list) -> None:  # type: ignore[type-arg]
    with pytest.raises(ChatTemplateError):
        apply_chat_template(messages)
