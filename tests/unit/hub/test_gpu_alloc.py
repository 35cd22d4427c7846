"""The exclusive GPU allocator: unit tests and a randomized concurrent check."""

import asyncio
import random
import threading

import pytest

from rootless_gpu_spawner.hub.gpu_alloc import GPUAllocator, GPUInfo, GPURequestError, NoFreeGPU


def test_allocate_count_and_release():
    a = GPUAllocator(["0", "1", "2", "3"])
    assert a.allocate(("alice", ""), 2) == ["0", "1"]
    assert a.allocate(("bob", ""), 2) == ["2", "3"]
    assert a.free() == []
    with pytest.raises(NoFreeGPU) as info:
        a.allocate(("carol", ""), 2)
    msg = str(info.value)
    assert "4 of 4 are in use" in msg and "0 free" in msg
    assert "alice" not in msg and "bob" not in msg  # never another student's name
    assert a.release(("alice", "")) == ["0", "1"]
    assert a.allocate(("carol", ""), 2) == ["0", "1"]


def test_allocate_is_idempotent_per_server():
    a = GPUAllocator(["0", "1"])
    assert a.allocate(("alice", ""), 1) == ["0"]
    assert a.allocate(("alice", ""), 1) == ["0"]
    assert a.free() == ["1"]


def test_specific_ids():
    a = GPUAllocator(["0", "1", "2"])
    assert a.allocate(("alice", ""), ["2"]) == ["2"]
    with pytest.raises(NoFreeGPU, match="GPU 2 is in use") as info:
        a.allocate(("bob", ""), ["2", "0"])
    assert "Free GPUs: 0,1" in str(info.value) and "alice" not in str(info.value)
    with pytest.raises(GPURequestError, match="no GPU 7"):
        a.allocate(("bob", ""), ["7"])


def test_zero_and_impossible():
    a = GPUAllocator(["0"])
    assert a.allocate(("alice", ""), 0) == []
    assert a.held_by(("alice", "")) == []
    with pytest.raises(GPURequestError, match="has 1"):
        a.allocate(("alice", ""), 3)


def test_limit_counts_all_servers_of_a_user():
    a = GPUAllocator(["0", "1", "2", "3"])
    a.allocate(("alice", "one"), 1, limit=2)
    a.allocate(("alice", "two"), 1, limit=2)
    with pytest.raises(GPURequestError, match="limit is 2"):
        a.allocate(("alice", "three"), 1, limit=2)
    assert a.held_by_user("alice") == 2
    assert a.allocate(("bob", ""), 2, limit=2) == ["2", "3"]


def test_restore_after_restart_never_double_allocates():
    a = GPUAllocator()  # inventory not known yet, as at hub start before NVML answered
    assert a.restore(("alice", ""), ["1", "2"]) == ["1", "2"]
    assert a.restore(("bob", ""), ["2", "3"]) == ["3"]  # 2 is alice's: not recorded twice
    a.set_inventory(["0", "1", "2", "3"])
    assert a.free() == ["0"]
    assert a.allocate(("carol", ""), 1) == ["0"]
    with pytest.raises(NoFreeGPU):
        a.allocate(("dave", ""), 1)


def test_restore_drops_unknown_ids():
    a = GPUAllocator(["0", "1"])
    assert a.restore(("alice", ""), ["1", "9"]) == ["1"]
    assert a.restore(("alice", ""), []) == []
    assert a.free() == ["0", "1"]


def test_duplicate_inventory_refused():
    with pytest.raises(ValueError):
        GPUAllocator(["0", "0"])


def test_gpuinfo_describe():
    assert GPUInfo("1").describe() == "GPU 1"
    text = GPUInfo("0", "NVIDIA H200", 140 * 2**30, 3 * 2**30).describe()
    assert "NVIDIA H200" in text and "3.0 of 140.0 GiB" in text


def _check_and_record(in_use, guard, key, ids):
    with guard:
        for g in ids:
            assert g not in in_use, f"GPU {g} handed to {key} while held by {in_use[g]}"
            in_use[g] = key


def _forget(in_use, guard, ids):
    with guard:
        for g in ids:
            del in_use[g]


def test_randomized_threads_never_double_allocate():
    a = GPUAllocator([str(i) for i in range(8)])
    in_use, guard = {}, threading.Lock()
    errors = []

    def worker(n):
        rng = random.Random(n)
        key = (f"user{n % 11}", f"srv{n}")
        for _ in range(300):
            try:
                if rng.random() < 0.5:
                    ids = a.allocate(key, rng.choice([1, 1, 2, 3, [str(rng.randrange(8))]]))
                    _check_and_record(in_use, guard, key, ids) if ids and key not in in_use.values() else None
                else:
                    held = a.held_by(key)
                    _forget(in_use, guard, [g for g in held if in_use.get(g) == key])
                    a.release(key)
            except (NoFreeGPU, GPURequestError):
                pass
            except AssertionError as e:
                errors.append(str(e))
            snap = a.snapshot()
            flat = [g for ids in snap.values() for g in ids]
            if len(flat) != len(set(flat)):
                errors.append(f"double allocation in {snap}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]


async def test_randomized_tasks_never_double_allocate():
    """Spawns on the hub's event loop: allocate, hold a while, release; 200 tasks at once."""
    a = GPUAllocator([str(i) for i in range(4)])
    holders = {}
    granted = refused = 0

    async def spawn(n):
        nonlocal granted, refused
        rng = random.Random(1000 + n)
        key = (f"student{n}", "")
        await asyncio.sleep(rng.random() / 100)
        try:
            ids = a.allocate(key, rng.choice([1, 2]))
        except NoFreeGPU:
            refused += 1
            return
        for g in ids:
            assert g not in holders, f"GPU {g} given to {key} and {holders[g]}"
            holders[g] = key
        granted += 1
        await asyncio.sleep(rng.random() / 100)
        for g in ids:
            del holders[g]
        a.release(key)

    await asyncio.gather(*(spawn(n) for n in range(200)))
    assert granted > 0 and refused > 0  # both paths were exercised
    assert a.free() == ["0", "1", "2", "3"] and a.snapshot() == {}
