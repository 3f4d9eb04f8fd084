"""The key-map core: strict checks that name keys, transforms that round-trip exactly."""

import pytest
import torch
from torch import nn

from svd_core.loading import Cat, Conv1x1, KeyMap, KeyMapError, Transpose


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12, bias=False)
        self.proj = nn.Linear(4, 3, bias=False)
        self.attn_q = nn.Linear(4, 4)


def tiny_map() -> KeyMap:
    return KeyMap(
        "test",
        {
            "qkv.weight": Cat("q.weight", "k.weight", "v.weight"),
            "proj.weight": Transpose("projection"),
            "attn_q.weight": Conv1x1("attn.q.weight"),
            "attn_q.bias": "attn.q.bias",
        },
        ignored={"text.": "text tower, unused", "logit_scale": "unused"},
    )


def theirs_of(module: Tiny) -> dict[str, torch.Tensor]:
    return tiny_map().to_theirs(module.state_dict())


def test_round_trip_is_bit_exact_and_shapes_are_the_layouts():
    module = Tiny()
    theirs = theirs_of(module)
    assert theirs["q.weight"].shape == (4, 4)
    assert theirs["projection"].shape == (4, 3)
    assert theirs["attn.q.weight"].shape == (4, 4, 1, 1)
    back = tiny_map().to_ours(theirs.__getitem__)
    for name, tensor in module.state_dict().items():
        assert torch.equal(back[name], tensor)


def test_load_into_reports_ignored_keys_with_reasons():
    source, target = Tiny(), Tiny()
    checkpoint = theirs_of(source) | {
        "text.token_embedding": torch.zeros(2),
        "logit_scale": torch.ones(()),
    }
    ignored = tiny_map().load_into(target, checkpoint)
    assert ignored == {"text.token_embedding": "text tower, unused", "logit_scale": "unused"}
    assert torch.equal(target.qkv.weight, source.qkv.weight)


def test_missing_unexpected_and_misshapen_keys_are_named():
    checkpoint = theirs_of(Tiny())
    del checkpoint["k.weight"]
    checkpoint["stray.weight"] = torch.zeros(1)
    checkpoint["projection"] = torch.zeros(5, 3)
    with pytest.raises(KeyMapError) as info:
        tiny_map().load_into(Tiny(), checkpoint)
    message = str(info.value)
    assert "missing from the checkpoint (1: k.weight)" in message
    assert "unexpected in the checkpoint (1: stray.weight)" in message
    assert "projection: checkpoint has [5, 3], model expects [4, 3]" in message


def test_unmapped_model_parameters_are_named():
    partial = KeyMap("test", {"qkv.weight": Cat("q", "k", "v")})
    with pytest.raises(KeyMapError, match="no checkpoint key in the map \\(3: attn_q.bias"):
        partial.check(
            {"q": (4, 4), "k": (4, 4), "v": (4, 4)},
            {k: tuple(v.shape) for k, v in Tiny().state_dict().items()},
        )


def test_a_checkpoint_key_used_twice_is_a_map_error():
    with pytest.raises(KeyMapError, match="twice"):
        KeyMap("test", {"a": "x", "b": "x"})


def test_prefix_and_merge_compose():
    shifted = tiny_map().with_prefix("encoder.", "model.visual.")
    assert "encoder.qkv.weight" in shifted.entries
    assert shifted.entries["encoder.qkv.weight"].keys[0] == "model.visual.q.weight"
    assert shifted.ignored_reason("model.visual.text.anything") == "text tower, unused"
    merged = KeyMap.merge("both", shifted, tiny_map().with_prefix("decoder.", "other."))
    assert len(merged.entries) == 8
    with pytest.raises(KeyMapError, match="overlap"):
        KeyMap.merge("both", shifted, shifted)
