"""Key maps: declarative tables between our parameter names and a checkpoint layout, both directions.

A `KeyMap` lists, for every tensor of our module, where it lives in one checkpoint layout (official
single file, diffusers folder) and how it is stored there:

- `"name"`: the same tensor under another name;
- `Cat("q", "k", "v")`: ours is theirs concatenated along dim 0 (a fused projection stored split);
- `Transpose("proj")`: ours is theirs transposed (a matrix used as `x @ proj` by the reference);
- `Conv1x1("q.weight")`: ours is a linear weight (O, I), theirs a 1x1 convolution (O, I, 1, 1).

Checkpoint tensors that we knowingly do not load are listed in `ignored` with the reason. Loading is
strict: every parameter filled once, every checkpoint tensor used once or ignored by name; anything
else is a `KeyMapError` naming the keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .files import CheckpointError


class KeyMapError(CheckpointError):
    """A checkpoint and a model that do not match through a key map."""


@dataclass(frozen=True)
class Cat:
    """Our tensor is the checkpoint tensors `keys` concatenated along dim 0."""

    keys: tuple[str, ...]

    def __init__(self, *keys: str) -> None:
        object.__setattr__(self, "keys", tuple(keys))

    def their_shapes(self, ours: tuple[int, ...]) -> list[tuple[int, ...]]:
        part = ours[0] // len(self.keys)
        return [(part, *ours[1:])] * len(self.keys)

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tensors, dim=0)

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return list(tensor.chunk(len(self.keys), dim=0))


@dataclass(frozen=True)
class Transpose:
    """Our 2-D tensor is the checkpoint tensor transposed."""

    key: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def their_shapes(self, ours: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [tuple(reversed(ours))]

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0].t()

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor.t()]


@dataclass(frozen=True)
class Conv1x1:
    """Our linear weight (O, I) is stored as a 1x1 convolution weight (O, I, 1, 1)."""

    key: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def their_shapes(self, ours: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [(*ours, 1, 1)]

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0][:, :, 0, 0]

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor[:, :, None, None]]


@dataclass(frozen=True)
class Same:
    """Our tensor is the checkpoint tensor `key`, unchanged."""

    key: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def their_shapes(self, ours: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [ours]

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0]

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]


Source = str | Same | Cat | Transpose | Conv1x1


def _as_rule(source: Source) -> Same | Cat | Transpose | Conv1x1:
    return Same(source) if isinstance(source, str) else source


def _listing(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)}: {shown}{more}"


@dataclass(frozen=True)
class KeyMap:
    """Where each of our tensors lives in one checkpoint layout, and what that layout holds unused.

    entries: our state-dict name -> its source in the checkpoint.
    ignored: checkpoint name, or prefix ending in ".", -> why it is not loaded.
    """

    layout: str
    entries: Mapping[str, Source]
    ignored: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rules = {ours: _as_rule(source) for ours, source in self.entries.items()}
        object.__setattr__(self, "entries", rules)
        seen: dict[str, str] = {}
        for ours, rule in rules.items():
            for key in rule.keys:
                if key in seen:
                    raise KeyMapError(
                        f"{self.layout} key map uses checkpoint key {key!r} twice "
                        f"(for {seen[key]!r} and {ours!r})"
                    )
                seen[key] = ours

    # ---- composition -------------------------------------------------------------------------

    def with_prefix(self, ours: str = "", theirs: str = "") -> KeyMap:
        """The same map with `ours` prepended to our names and `theirs` to checkpoint names."""

        def shift(rule: Same | Cat | Transpose | Conv1x1) -> Same | Cat | Transpose | Conv1x1:
            if isinstance(rule, Cat):
                return Cat(*(theirs + k for k in rule.keys))
            return type(rule)(theirs + rule.keys[0])

        return KeyMap(
            self.layout,
            {ours + name: shift(rule) for name, rule in self.entries.items()},
            {theirs + name: why for name, why in self.ignored.items()},
        )

    @staticmethod
    def merge(layout: str, *maps: KeyMap) -> KeyMap:
        """One map from several (e.g. the UNet's, the VAE's and the image encoder's)."""
        entries: dict[str, Source] = {}
        ignored: dict[str, str] = {}
        for m in maps:
            overlap = set(entries) & set(m.entries)
            if overlap:
                raise KeyMapError(f"key maps overlap on our names {_listing(overlap)}")
            entries.update(m.entries)
            ignored.update(m.ignored)
        return KeyMap(layout, entries, ignored)

    # ---- queries -----------------------------------------------------------------------------

    def checkpoint_keys(self) -> set[str]:
        """Every checkpoint key this map reads."""
        return {key for rule in self.entries.values() for key in rule.keys}

    def ignored_reason(self, key: str) -> str | None:
        """Why `key` is not loaded, or None if it is not listed as ignored."""
        if key in self.ignored:
            return self.ignored[key]
        for prefix, why in self.ignored.items():
            if prefix.endswith(".") and key.startswith(prefix):
                return why
        return None

    def check(
        self,
        checkpoint_shapes: Mapping[str, tuple[int, ...]],
        model_shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, str]:
        """Verify that the checkpoint fills the model exactly; return the ignored keys with reasons.

        Raises KeyMapError naming every problem: parameters the map does not cover, map entries for
        parameters the model does not have, checkpoint keys that are missing, unexpected or of the
        wrong shape.
        """
        problems = []
        unmapped = set(model_shapes) - set(self.entries)
        if unmapped:
            problems.append(
                f"model parameters with no checkpoint key in the map ({_listing(unmapped)})"
            )
        stale = set(self.entries) - set(model_shapes)
        if stale:
            problems.append(
                f"map entries for parameters the model does not have ({_listing(stale)})"
            )
        needed = self.checkpoint_keys()
        missing = needed - set(checkpoint_shapes)
        if missing:
            problems.append(f"missing from the checkpoint ({_listing(missing)})")
        ignored = {}
        unexpected = []
        for key in set(checkpoint_shapes) - needed:
            why = self.ignored_reason(key)
            if why is None:
                unexpected.append(key)
            else:
                ignored[key] = why
        if unexpected:
            problems.append(f"unexpected in the checkpoint ({_listing(unexpected)})")
        mismatched = []
        for ours, rule in self.entries.items():
            if ours not in model_shapes:
                continue
            expected = rule.their_shapes(tuple(model_shapes[ours]))
            for key, shape in zip(rule.keys, expected, strict=True):
                if key in checkpoint_shapes and tuple(checkpoint_shapes[key]) != tuple(shape):
                    mismatched.append(
                        f"{key}: checkpoint has {list(checkpoint_shapes[key])}, model expects {list(shape)}"
                        f" (for {ours})"
                    )
        if mismatched:
            shown = "; ".join(mismatched[:8])
            more = f"; ... and {len(mismatched) - 8} more" if len(mismatched) > 8 else ""
            problems.append(f"shape mismatches ({len(mismatched)}): {shown}{more}")
        if problems:
            raise KeyMapError(
                f"{self.layout} checkpoint does not match the model:\n- " + "\n- ".join(problems)
            )
        return ignored

    # ---- conversion --------------------------------------------------------------------------

    def to_ours(self, get: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Build our state dict, reading checkpoint tensors through `get(key)` (lazily, one at a time)."""
        return {
            ours: rule.to_ours([get(k) for k in rule.keys]) for ours, rule in self.entries.items()
        }

    def to_theirs(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our state dict -> this layout's tensors (contiguous, ready to save)."""
        out = {}
        for ours, rule in self.entries.items():
            if ours not in state:
                raise KeyMapError(f"state dict lacks {ours!r}, which the {self.layout} map exports")
            for key, tensor in zip(rule.keys, rule.to_theirs(state[ours]), strict=True):
                out[key] = tensor.contiguous()
        return out

    def load_into(
        self, module: torch.nn.Module, checkpoint: Mapping[str, torch.Tensor]
    ) -> dict[str, str]:
        """Strictly copy an in-memory checkpoint into `module`; return the ignored keys with reasons."""
        model_shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        ignored = self.check({k: tuple(v.shape) for k, v in checkpoint.items()}, model_shapes)
        module.load_state_dict(self.to_ours(checkpoint.__getitem__), strict=True)
        return ignored
