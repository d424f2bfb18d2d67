import torch

from ladd.models.text_encoder import MiniLMEncoder


def test_minilm_shapes_padding_and_cache():
    enc = MiniLMEncoder(max_length=16)
    emb = enc.encode(["a red circle", "two blue squares in the top left", "a red circle"])
    assert emb.tokens.shape == (3, 16, 384) and emb.pooled.shape == (3, 384)
    torch.testing.assert_close(emb.pooled.norm(dim=-1), torch.ones(3))
    assert torch.equal(emb.tokens[0], emb.tokens[2])
    n = len(enc.tokenizer("a red circle")["input_ids"])
    assert emb.tokens[0, n:].abs().sum() == 0 and emb.tokens[0, :n].abs().sum() > 0  # zero past the prompt
    assert len(enc._cache) == 2
    # semantics: a paraphrase is closer than a different object
    e = enc.encode(["a red circle", "a red round dot", "a green triangle"]).pooled
    assert (e[0] @ e[1]) > (e[0] @ e[2])
