import random

from epp.tokenization.chat_template import apply_chat_template, render_chat_segments
from epp.tokenization.tokenizer import SimpleTokenizer


def test_segments_join_to_the_template() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    assert "".join(render_chat_segments(msgs)) == apply_chat_template(msgs)
    assert "".join(render_chat_segments(msgs, False)) == apply_chat_template(msgs, False)


def test_simple_tokenizer_never_spans_two_messages() -> None:
    # The precise scorer caches tokens per message; that is only right if the tokens of the
    # whole conversation are the concatenation of each message's tokens.
    rng = random.Random(7)
    alphabet = "abc XYZ 123 .,!?\n\t  émoji🙂 <|> long-wordwithoutspaces "
    tok = SimpleTokenizer()
    for _ in range(300):
        msgs = [{"role": rng.choice(["system", "user", "assistant"]),
                 "content": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))}
                for _ in range(rng.randint(1, 5))]
        segments = render_chat_segments(msgs)
        joined = [t for seg in segments for t in tok.encode(seg)]
        assert joined == tok.encode(apply_chat_template(msgs))
