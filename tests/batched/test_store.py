"""The batched engine's student store: students added a chunk at a time."""

import torch

from peerkd.batched.store import StudentStore
from peerkd.world.build import WorldSpec, build_world


def test_students_added_chunk_by_chunk_are_those_built_at_once_and_the_stacks_grow_by_doubling():
    # Prepare: 10 mlp32 students, one store filled at once, one in chunks of 3 (as the grid's chunks arrive).
    world = build_world(WorldSpec(dataset="digits", num_clients=10, seed=0, samples_per_client=5))
    at_once, chunked = StudentStore(torch.device("cpu")), StudentStore(torch.device("cpu"))
    # Execute
    ref = at_once.load("mlp32", world, list(range(10)))
    rows = []
    for start in range(0, 10, 3):
        chunked.load("mlp32", world, list(range(start, min(start + 3, 10))))
        rows.append(len(chunked._weights["mlp32"]["1.weight"]))
    got = chunked.load("mlp32", world, list(range(10)))
    # Assert: the same students; room grew by doubling (3, 6, 12), not a chunk at a time.
    assert list(got) == list(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert rows == [3, 6, 12, 12]
    # A student saved and loaded again is itself; a snapshot holds the 10 students, not the room.
    chunked.save("mlp32", [4], {k: v[4:5] + 1 for k, v in ref.items()})
    assert torch.equal(chunked.load("mlp32", world, [4])["1.weight"], ref["1.weight"][4:5] + 1)
    assert len(chunked.snapshot()["archs"]["mlp32"]["weights"]["1.weight"]) == 10
