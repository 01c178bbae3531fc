"""Seeded noise: every key regenerates bit for bit, keys differ, moments are right, the global RNG is untouched."""

from __future__ import annotations

import math

import pytest
import torch

from unigrad import ProbeNoise, UnigradError
from unigrad.core import rng
from unigrad.core.rng import CHUNK, generator, key_hash, noise_table

SOURCES = ("generator", "table")
DISTRIBUTIONS = ("gaussian", "rademacher", "sphere")
SHAPES = [torch.Size([3, 5]), torch.Size([7]), torch.Size([2, 2, 2])]


def like(shapes: list[torch.Size]) -> list[torch.Tensor]:
    return [torch.zeros(s) for s in shapes]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_regeneration_is_bitwise(source: str, distribution: str) -> None:
    tensors = like(SHAPES)
    a = ProbeNoise(distribution, source).direction(3, 7, 2, tensors)
    b = ProbeNoise(distribution, source).direction(3, 7, 2, tensors)  # a fresh instance, same key
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [x.shape for x in a] == SHAPES
    block = ProbeNoise(distribution, source).block(3, 7, range(5), tensors)
    for p in range(5):  # a block is the probes' directions stacked
        d = ProbeNoise(distribution, source).direction(3, 7, p, tensors)
        assert all(torch.equal(blk[p], x) for blk, x in zip(block, d))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_different_keys_differ(source: str, distribution: str) -> None:
    noise = ProbeNoise(distribution, source)
    key = (1, 2, 3, 0)
    base = noise.raw(*key, (64,))
    for changed in [(2, 2, 3, 0), (1, 3, 3, 0), (1, 2, 4, 0), (1, 2, 3, 1)]:
        assert not torch.equal(noise.raw(*changed, (64,)), base), changed


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_global_rng_untouched(source: str, distribution: str) -> None:
    state = torch.get_rng_state()
    # a table seed no other test uses, so the table itself is built inside this check
    noise = ProbeNoise(distribution, source, table_size=1 << 16, table_seed=12345)
    noise.block(0, 0, range(3), like(SHAPES))
    noise.direction(0, 1, 0, like(SHAPES))
    list(noise.chunks(0, 0, 0, 0, 3 * CHUNK // 2))
    generator(1, 2, 3)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("source", SOURCES)
def test_gaussian_moments(source: str) -> None:
    n = 200_000
    x = ProbeNoise("gaussian", source).raw(5, 0, 0, 0, (n,)).double()
    # 5 standard errors: SE(mean) = 1/√n, SE(variance) = √(2/n) for a standard normal
    assert abs(float(x.mean())) < 5 / math.sqrt(n)
    assert abs(float(x.var()) - 1) < 5 * math.sqrt(2 / n)
    # and it is not a constant or a repeated pattern: the fourth moment of a normal is 3
    assert abs(float((x**4).mean()) - 3) < 5 * math.sqrt(96 / n)


@pytest.mark.parametrize("source", SOURCES)
def test_rademacher_is_plus_minus_one(source: str) -> None:
    n = 100_000
    x = ProbeNoise("rademacher", source).raw(5, 0, 0, 0, (n,))
    assert torch.equal(x.abs(), torch.ones(n))
    assert abs(float(x.double().mean())) < 5 / math.sqrt(n)  # 5 standard errors of a mean of ±1


@pytest.mark.parametrize("source", SOURCES)
def test_sphere_has_norm_sqrt_d_over_all_tensors(source: str) -> None:
    tensors = like([torch.Size([40, 30]), torch.Size([30]), torch.Size([5, 30])])
    d = sum(t.numel() for t in tensors)
    noise = ProbeNoise("sphere", source)
    # the norm is taken in float64 and the float32 raws scaled by its float32 factor: ‖u‖ is √d within ~2u = 1.2e-7
    for p in range(3):
        u = noise.direction(0, 4, p, tensors)
        norm = math.sqrt(sum(float(x.double().square().sum()) for x in u))
        assert norm == pytest.approx(math.sqrt(d), rel=1e-6)
    block = noise.block(0, 4, range(3), tensors)
    norms = torch.sqrt(sum(b.double().square().flatten(1).sum(1) for b in block))
    assert torch.allclose(norms, torch.full((3,), math.sqrt(d), dtype=torch.float64), rtol=1e-6)
    # the streaming form of the same factor (float64 sums in other chunks: the float32 products differ by ≤ 1 ulp)
    scale = noise.scale(0, 4, 1, [t.shape for t in tensors])
    raw = [noise.raw(0, 4, 1, i, t.shape) for i, t in enumerate(tensors)]
    assert all(torch.allclose(r * scale, x, rtol=1e-6) for r, x in zip(raw, noise.direction(0, 4, 1, tensors)))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_chunks_concatenate_to_raw(source: str, distribution: str) -> None:
    noise = ProbeNoise(distribution, source)
    n = 2 * CHUNK + 123  # three chunks, the last one partial
    pieces = list(noise.chunks(2, 9, 1, 4, n))
    assert [start for start, _ in pieces] == [0, CHUNK, 2 * CHUNK]
    assert all(len(piece) <= CHUNK for _, piece in pieces)
    assert torch.equal(torch.cat([piece for _, piece in pieces]), noise.raw(2, 9, 1, 4, (n,)))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_raw_block_stacks_raw(source: str, distribution: str) -> None:
    noise = ProbeNoise(distribution, source, table_size=1 << 16)
    shape = (50, 40)  # 2000 elements: 32 probes per contiguous table group, so 30:70 spans groups
    for probes in (range(0, 5), range(3, 4), range(30, 70)):
        block = noise.raw_block(1, 2, probes, 0, shape)
        assert block.shape == (len(probes), *shape)
        assert torch.equal(block, torch.stack([noise.raw(1, 2, p, 0, shape) for p in probes]))


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_table_views_are_free(distribution: str) -> None:
    noise = ProbeNoise(distribution, "table")
    table = noise_table(
        noise.table_size, noise.table_seed, "cpu", "rademacher" if distribution != "gaussian" else "gaussian"
    )
    block = noise.raw_block(0, 3, range(8), 0, (64, 32))
    assert block.is_contiguous()
    assert block.untyped_storage().data_ptr() == table.untyped_storage().data_ptr()  # a view, no copy
    one = noise.raw(0, 3, 5, 0, (64, 32))
    assert one.is_contiguous() and one.untyped_storage().data_ptr() == table.untyped_storage().data_ptr()


def test_table_is_built_once_and_replays() -> None:
    a = noise_table(1 << 12, seed=77)
    assert noise_table(1 << 12, seed=77) is a
    rng._TABLES.pop((1 << 12, 77, "cpu", "gaussian"))
    assert torch.equal(noise_table(1 << 12, seed=77), a)  # rebuilt bit for bit from its seed
    assert not torch.equal(noise_table(1 << 12, seed=78), a)


def test_key_hash_and_generator() -> None:
    assert key_hash(1, 2, 3) == key_hash(1, 2, 3)
    assert len({key_hash(1, 2, 3), key_hash(3, 2, 1), key_hash(1, 2), key_hash(1, 2, 3, 0)}) == 4
    assert 0 <= key_hash(-1, 2**70) < 2**64
    a = torch.randn(5, generator=generator(4, 5))
    assert torch.equal(a, torch.randn(5, generator=generator(4, 5)))
    assert not torch.equal(a, torch.randn(5, generator=generator(4, 6)))


def test_dtype_follows_the_tensor() -> None:
    t = torch.zeros(4, 3, dtype=torch.float64)
    for source in SOURCES:
        (u,) = ProbeNoise("gaussian", source).direction(0, 0, 0, [t])
        assert u.dtype == torch.float64 and u.shape == t.shape


def test_bad_options() -> None:
    with pytest.raises(UnigradError, match="distribution"):
        ProbeNoise("cauchy")
    with pytest.raises(UnigradError, match="noise_source"):
        ProbeNoise("gaussian", "urandom")
    with pytest.raises(UnigradError, match="table_size"):
        ProbeNoise("gaussian", "table", table_size=0)
    with pytest.raises(UnigradError, match="exceeds the noise table"):
        ProbeNoise("gaussian", "table", table_size=100).raw(0, 0, 0, 0, (101,))  # one row: no windows
    with pytest.raises(UnigradError, match="row windows"):
        ProbeNoise("gaussian", "table", table_size=100).raw(0, 0, 0, 0, (2, 51))  # rows over half the table


@pytest.mark.parametrize("distribution", ("gaussian", "rademacher"))
def test_a_tensor_larger_than_the_table_is_read_in_row_windows(distribution: str) -> None:
    # every access path (whole tensor, chunks, looked-up rows, probe blocks) gives the same bits, each row is a
    # window of the table, and the rows' windows move with the key
    noise = ProbeNoise(distribution, "table", table_size=1000)
    shape = (900, 37)  # 33,300 entries > 2·CHUNK, rows straddle chunk boundaries
    z = noise.raw(3, 4, 1, 2, shape)
    assert z.shape == shape
    flat = torch.cat([piece for _, piece in noise.chunks(3, 4, 1, 2, z.numel(), "cpu", shape)])
    assert torch.equal(flat, z.view(-1))
    ids = torch.tensor([[0, 899, 441], [442, 0, 17]])
    assert torch.equal(noise.rows(3, 4, 1, 2, shape, ids), z[ids])
    assert torch.equal(noise.raw_block(3, 4, range(3), 2, shape)[1], z)
    table = noise._table(torch.device("cpu"))
    windows = table.unfold(0, 37, 1)
    assert all(bool((windows == row).all(1).any()) for row in z[:50])
    assert not torch.equal(z, noise.raw(3, 5, 1, 2, shape)) and not torch.equal(z, noise.raw(3, 4, 0, 2, shape))
    with pytest.raises(UnigradError, match="shape is needed"):
        next(noise.chunks(3, 4, 1, 2, z.numel()))


def test_row_windows_tie_no_pair_of_entries_across_keys() -> None:
    # a single direction repeats table values across rows, but the stride is drawn per key, so no fixed pair of
    # entries is tied: over keys, any two entries share a table value about 1/table_size of the time (with a fixed
    # stride some pairs would be equal for every key, and E[z zᵀ] would have 1s off the diagonal)
    noise = ProbeNoise("gaussian", "table", table_size=256)
    ties = torch.zeros(400, 400)
    for step in range(1000):
        z = noise.raw(0, step, 0, 0, (200, 2)).reshape(-1)
        ties += (z[:, None] == z[None, :]).float()
    ties.fill_diagonal_(0)
    assert ties.max() / 1000 < 0.03  # P = 251: a given pair ties for 1/250 of the keys, about 4 of 1000
    assert 0 < ties.sum() / (1000 * 400 * 399) < 0.01  # the repeats are there, and rare per pair
    with pytest.raises(UnigradError, match="more rows"):
        noise.raw(0, 0, 0, 0, (252, 2))
