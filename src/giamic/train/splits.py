"""Train / validation / test inside one fold (docs/decisions.md, "validation split inside a fold").

The test part of a fold is the held-out session (from ``folds.json``); it is **sealed** here: the
training loop and model selection see only :attr:`FoldSplit.train` and :attr:`FoldSplit.val`, and
the test ids can be read only through :meth:`FoldSplit.open_test`, which the loop calls once,
after the best checkpoint has been selected. :meth:`FoldSplit.assert_sealed` lets every stage
before that check it.

Validation is carved from the training sessions only:

* ``random10`` (default): a stratified 10 % of the training utterances, drawn per class with a
  NumPy generator seeded ``1000 * seed + fold`` (fold = 1-based position in ``folds.json``), so
  the split is fixed per (seed, fold) and independent of everything else in the run.
* ``dialog_group``: whole dialogs are held out (same seed rule) until at least 10 % of the
  utterances are in validation, so no dialog contributes to both sides.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from giamic.errors import ConfigError, TrainError

VAL_MODES = ("random10", "dialog_group")


class LeakageError(AssertionError):
    """A test utterance reached training or model selection, or the test part was read too early."""


def split_seed(seed: int, fold_number: int) -> int:
    """The validation split's seed for (seed, fold): ``1000 * seed + fold``."""
    return 1000 * int(seed) + int(fold_number)


def stratified_holdout(ids: Sequence[str], labels: Mapping[str, int], fraction: float,
                       rng: np.random.Generator) -> list[str]:
    """A stratified random ``fraction`` of ``ids``: per class, ``round(fraction * n_c)`` ids (at
    least one from every class with two or more members, so a small corpus still validates on
    every class; never the last member of a class)."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for u in ids:
        by_class[int(labels[u])].append(u)
    held: list[str] = []
    for c in sorted(by_class):
        members = sorted(by_class[c])  # sorted: independent of the input order
        n = len(members)
        if n < 2:
            continue
        k = min(n - 1, max(1, int(round(fraction * n))))
        pick = rng.permutation(n)[:k]
        held.extend(members[i] for i in sorted(pick))
    return held


def dialog_holdout(ids: Sequence[str], groups: Mapping[str, str], fraction: float,
                   rng: np.random.Generator) -> list[str]:
    """Whole groups (dialogs) in random order until at least ``fraction`` of ``ids`` are held out."""
    by_group: dict[str, list[str]] = defaultdict(list)
    for u in ids:
        by_group[groups[u]].append(u)
    names = sorted(by_group)
    if len(names) < 2:
        raise TrainError("dialog_group validation needs at least two dialogs in the training part")
    target = fraction * len(ids)
    held: list[str] = []
    for gi in rng.permutation(len(names)):
        if len(held) >= target:
            break
        held.extend(by_group[names[gi]])
    if len(held) == len(ids):  # keep at least one dialog for training
        raise TrainError("dialog_group validation would hold out every training dialog")
    return held


@dataclass
class FoldSplit:
    """One fold's three parts. The test ids are private until :meth:`open_test`."""

    name: str
    fold_number: int
    train: list[str]
    val: list[str]
    _test: list[str] = field(repr=False)
    test_opened: bool = False

    def open_test(self) -> list[str]:
        """The test ids; call only after model selection (the loop does, once)."""
        self.test_opened = True
        return list(self._test)

    @property
    def n_test(self) -> int:
        return len(self._test)

    def assert_sealed(self) -> None:
        if self.test_opened:
            raise LeakageError(f"{self.name}: the test part was opened before model selection finished")

    def check_disjoint(self) -> None:
        test = set(self._test)
        for part, ids in (("train", self.train), ("val", self.val)):
            bad = test.intersection(ids)
            if bad:
                raise LeakageError(f"{self.name}: {len(bad)} test utterance(s) in {part}, e.g. {sorted(bad)[:3]}")
        both = set(self.train).intersection(self.val)
        if both:
            raise LeakageError(f"{self.name}: {len(both)} utterance(s) in both train and val")


def make_fold_split(name: str, fold_number: int, train_ids: Sequence[str], test_ids: Sequence[str],
                    labels: Mapping[str, int], seed: int, mode: str = "random10", fraction: float = 0.1,
                    groups: Mapping[str, str] | None = None) -> FoldSplit:
    """Split a fold's training part into train/val (see the module docstring) and seal its test part."""
    if mode not in VAL_MODES:
        raise ConfigError(f"data.val_mode must be one of {VAL_MODES}, got {mode!r}")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {fraction}")
    test_set = set(test_ids)
    train_ids = [u for u in train_ids]
    overlap = test_set.intersection(train_ids)
    if overlap:  # folds.json itself is inconsistent: never train on a test utterance
        raise LeakageError(f"{name}: folds.json lists {len(overlap)} utterance(s) in both train and test")
    rng = np.random.default_rng(split_seed(seed, fold_number))
    if mode == "random10":
        val = stratified_holdout(train_ids, labels, fraction, rng)
    else:
        if groups is None:
            raise TrainError("dialog_group validation needs the utterances' dialogs")
        val = dialog_holdout(train_ids, groups, fraction, rng)
    val_set = set(val)
    train = [u for u in train_ids if u not in val_set]
    val = [u for u in train_ids if u in val_set]  # keep corpus order
    if not train or not val:
        raise TrainError(f"{name}: the training part ({len(train_ids)} utterances) is too small to split")
    split = FoldSplit(name=name, fold_number=fold_number, train=train, val=val, _test=list(test_ids))
    split.check_disjoint()
    return split
