"""`_RouterStreaks` (every router's stretch of starved/hot recorded steps in one matrix) equals one
`_Streak` per router, whichever routers a recorded step holds and in whatever order."""
from __future__ import annotations

import numpy as np

from inspector.probes.experts.streaks import STARVED_STEPS, _RouterStreaks, _Streak


def test_router_streaks_equal_one_streak_per_router_with_routers_coming_and_going() -> None:
    rng = np.random.default_rng(0)
    names, experts = [f"layers.{i}.router" for i in range(5)], 6
    together = _RouterStreaks(experts)
    alone = {n: _Streak.empty(experts) for n in names}
    due_seen = 0
    for step in range(4 * STARVED_STEPS):
        present = [n for n in names if rng.random() < 0.9]
        rng.shuffle(present)
        flags = rng.random((len(present), experts)) < 0.97            # long stretches, broken now and then
        if step % 60 == 0:
            flags[:] = False                                          # a step that flags nothing (the quiet path)
        due = together.update(step, present, flags)
        for j, n in enumerate(present):
            expected = alone[n].update_flags(step, flags[j])
            np.testing.assert_array_equal(due[j], expected)
            mine = together.of(n)
            np.testing.assert_array_equal(mine.since, alone[n].since)
            np.testing.assert_array_equal(mine.seen, alone[n].seen)
            due_seen += int(expected.sum())
    assert due_seen > 0                                               # the comparison covered reports


def test_routers_alike_are_decoded_at_once_as_one_at_a_time(monkeypatch) -> None:
    import torch

    from inspector.probes.experts import load as experts

    class _Info:
        def __init__(self, i: int, e: int, bias: bool) -> None:
            self.name, self.layer, self.n_experts, self.capacity = f"layers.{i}.router", i, e, False
            self._bias = torch.randn(e) if bias else None

        def bias(self):
            return self._bias

    g = torch.Generator().manual_seed(0)
    for shapes in ([(8, True)] * 3, [(8, False)] * 4, [(8, True), (8, False), (6, True)]):
        items = []
        for i, (e, bias) in enumerate(shapes):
            acc = experts._Acc()
            acc.counts = torch.randint(0, 50, (e + 1,), generator=g).double()
            acc.entropy_sum, acc.tokens = torch.rand((), generator=g), 3 + i
            acc.aux_sum, acc.aux_n = (torch.rand((), generator=g), 2) if i % 2 else (None, 0)
            items.append((_Info(i, e, bias), acc))
        fast = experts._StepLoad.pack(5, items).values()
        monkeypatch.setattr(experts, "_uniform", lambda layouts: False)
        slow = experts._StepLoad.pack(5, items).values()
        monkeypatch.undo()
        for key in slow:
            for a, b in zip(fast[key], slow[key]):
                if isinstance(b, np.ndarray):
                    np.testing.assert_array_equal(a, b)
                else:
                    assert (a is None and b is None) or a == b or (np.isnan(a) and np.isnan(b)), (key, a, b)


def test_routers_alike_are_counted_by_one_bincount_as_one_at_a_time() -> None:
    """`_count_all` (one bincount per group of routers alike) gives every router the counts of its
    own `_count_ids`: equal and unequal token counts, ids out of range, counts folded earlier."""
    import torch

    from inspector.probes.experts import load as experts

    class _Info:
        def __init__(self, i: int, e: int) -> None:
            self.name, self.n_experts = f"layers.{i}.router", e

    g = torch.Generator().manual_seed(0)
    for sizes in ([(5, 2)] * 3, [(5, 2), (3, 2), (7, 2)], [(4, 1), (6, 3)]):
        for e in (4, 8):
            together, alone = [], []
            for i, (forwards, k) in enumerate(sizes):
                infos = _Info(i, e)
                ids = [torch.randint(-2, e + 2, (forwards, k), generator=g) for _ in range(3)]
                folded = torch.randint(0, 9, (e + 1,), generator=g) if i == 1 else None
                for bucket in (together, alone):
                    acc = experts._Acc(counts=folded)
                    for t in ids:
                        acc.ids.append(t.clone())
                        acc.ids_numel += t.numel()
                    bucket.append((infos, acc))
            experts._count_all(together)
            for info, acc in alone:
                experts._count_ids(info, acc)
            for (_, a), (_, b) in zip(together, alone):
                assert a.ids == [] and a.ids_numel == 0
                torch.testing.assert_close(a.counts, b.counts, rtol=0, atol=0)
                assert int(a.counts[e]) > 0          # the out-of-range ids landed in the last bin
