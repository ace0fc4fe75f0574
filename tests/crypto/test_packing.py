from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto import PackingSpec, SlotRangeError

FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


# -- layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("precision", "summands", "n_length", "slot_bits", "slots"),
    [
        (16, 100, 2048, 23, 89),  # the docstring example
        (16, 1000, 2048, 26, 78),  # BatchCrypt figure in the brief
        (32, 100, 2048, 39, 52),
        (16, 1, 2048, 16, 127),
        (16, 2, 2048, 17, 120),
        (16, 8, 512, 19, 26),
        (8, 9, 256, 12, 21),
        (52, 1024, 2048, 62, 33),
    ],
)
def test_layout(precision: int, summands: int, n_length: int, slot_bits: int, slots: int) -> None:
    spec = PackingSpec(precision_bits=precision, max_summands=summands, n_length=n_length)
    assert spec.levels == 2**precision - 1
    assert spec.headroom_bits == math.ceil(math.log2(summands))
    assert spec.slot_bits == slot_bits
    assert spec.slots_per_ciphertext == slots
    assert slots * slot_bits <= n_length - 1
    # K summands of the largest value fit in a slot
    assert summands * spec.summand_max < 2**spec.slot_bits


def test_derived_quantities() -> None:
    spec = PackingSpec(clip=2.5, precision_bits=10, max_summands=5, n_length=512, noise_bound=7)
    assert spec.levels == 1023
    assert spec.summand_max == 1023 + 14
    assert spec.slot_bits == (1037).bit_length() + 3
    assert spec.step == pytest.approx(5.0 / 1023)
    s = spec.slots_per_ciphertext
    assert [spec.n_ciphertexts(k) for k in (0, 1, s, s + 1, 3 * s)] == [0, 1, 1, 2, 3]
    assert spec.bytes_per_value() == pytest.approx(128 / s)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip": 0.0}, "clip"),
        ({"clip": -1.0}, "clip"),
        ({"clip": float("nan")}, "clip"),
        ({"clip": float("inf")}, "clip"),
        ({"clip": "1"}, "clip"),
        ({"precision_bits": 0}, "precision_bits"),
        ({"precision_bits": 53}, "precision_bits"),
        ({"precision_bits": 8.0}, "precision_bits"),
        ({"max_summands": 0}, "max_summands"),
        ({"max_summands": 2.0}, "max_summands"),
        ({"n_length": 255}, "n_length"),
        ({"noise_bound": -1}, "noise_bound"),
        ({"precision_bits": 52, "max_summands": 2049}, "exceeds 62 bits"),
        ({"precision_bits": 40, "noise_bound": 2**55}, "exceeds 62 bits"),
    ],
)
def test_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PackingSpec(**kwargs)  # type: ignore[arg-type]


def test_spec_is_frozen_and_compares_by_value() -> None:
    a = PackingSpec(clip=1.0, precision_bits=12)
    assert a == PackingSpec(clip=1.0, precision_bits=12)
    assert a != PackingSpec(clip=1.0, precision_bits=12, noise_bound=1)
    with pytest.raises(AttributeError):
        a.clip = 2.0  # type: ignore[misc]


# -- quantization ------------------------------------------------------------------------------
def test_quantize_endpoints_and_clipping() -> None:
    spec = PackingSpec(clip=2.0, precision_bits=8, n_length=512)
    q = spec.quantize([-2.0, 2.0, 0.0, -100.0, 100.0, 2.0 + 1e-12, -1.0])
    assert q.dtype == np.uint64
    assert q.tolist() == [0, 255, 128, 0, 255, 255, 64]  # rint(127.5) = 128 (half to even)


def test_quantize_noise_offset() -> None:
    spec = PackingSpec(clip=1.0, precision_bits=8, n_length=512, noise_bound=3)
    assert spec.quantize([-1.0, 1.0]).tolist() == [3, 258]
    assert spec.quantize([-1.0, 1.0], noise=[-3, 3]).tolist() == [0, 261]
    back = spec.dequantize(spec.quantize([0.5], noise=[2]), 1)
    np.testing.assert_allclose(back, [0.5 + 2 * spec.step], atol=spec.step / 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("position", [0, 3, 9])
def test_non_finite_values_name_their_position(bad: float, position: int) -> None:
    spec = PackingSpec(n_length=512)
    x = np.zeros(10)
    x[position] = bad
    x[-1] = float("nan")  # a later offender is not the one reported
    if position == 9:
        x[-1] = bad
    with pytest.raises(ValueError, match=f"position {position} "):
        spec.quantize(x)


def test_quantize_rejects_shapes_and_bad_noise() -> None:
    spec = PackingSpec(n_length=512, noise_bound=2)
    with pytest.raises(ValueError, match="1-D"):
        spec.quantize(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="1-D"):
        spec.quantize(0.5)
    with pytest.raises(ValueError, match="shape"):
        spec.quantize([0.0, 0.0], noise=[1])
    with pytest.raises(ValueError, match="integer"):
        spec.quantize([0.0], noise=[0.5])
    with pytest.raises(ValueError, match="exceeds noise_bound"):
        spec.quantize([0.0, 0.0], noise=[0, -3])
    with pytest.raises(ValueError, match="exceeds noise_bound"):
        PackingSpec(n_length=512).quantize([0.0], noise=[1])


@settings(max_examples=50, deadline=None)
@given(
    x=st.lists(FLOATS, min_size=1, max_size=60),
    clip=st.sampled_from([0.01, 1.0, 3.0, 1000.0]),
    precision=st.sampled_from([1, 4, 16, 30, 52]),
)
def test_decode_encode_within_half_step(x: list[float], clip: float, precision: int) -> None:
    spec = PackingSpec(clip=clip, precision_bits=precision, max_summands=2, n_length=512)
    q = spec.quantize(x)
    assert int(q.max()) <= spec.levels
    back = spec.dequantize(q, 1)
    err = np.abs(back - np.clip(x, -clip, clip))
    assert err.max() <= spec.step / 2 * (1 + 1e-9) + 1e-12 * clip


# -- packing -------------------------------------------------------------------------------------
def test_pack_layout_is_little_endian_slots() -> None:
    spec = PackingSpec(precision_bits=8, max_summands=4, n_length=256)  # 10-bit slots, 25 slots
    w, s = spec.slot_bits, spec.slots_per_ciphertext
    q = np.arange(1, s + 3, dtype=np.uint64) % np.uint64(spec.levels + 1)
    packed = spec.pack(q)
    assert len(packed) == 2
    expected0 = sum(int(v) << (w * i) for i, v in enumerate(q[:s]))
    expected1 = sum(int(v) << (w * i) for i, v in enumerate(q[s:]))
    assert packed == [expected0, expected1]
    assert all(m < 2 ** (spec.n_length - 1) for m in packed)


@settings(max_examples=50, deadline=None)
@given(
    data=st.data(),
    precision=st.integers(1, 52),
    headroom=st.integers(0, 10),
    n_length=st.sampled_from([256, 512, 1032]),
)
def test_pack_matches_integer_reference(
    data: st.DataObject, precision: int, headroom: int, n_length: int
) -> None:
    """Every slot width (word-aligned or crossing 64-bit words) against plain integer shifts."""
    if precision + headroom > 62:
        headroom = 62 - precision
    spec = PackingSpec(precision_bits=precision, max_summands=2**headroom, n_length=n_length)
    w, s = spec.slot_bits, spec.slots_per_ciphertext
    length = data.draw(st.integers(0, 2 * s + 1))
    top = 2**headroom * spec.summand_max
    values = data.draw(st.lists(st.integers(0, top), min_size=length, max_size=length))
    packed = spec.pack(np.array(values, dtype=np.uint64))
    expected = [
        sum(v << (w * j) for j, v in enumerate(values[i : i + s])) for i in range(0, length, s)
    ]
    assert packed == expected
    np.testing.assert_array_equal(
        spec.unpack(packed, length, 2**headroom), np.array(values, dtype=np.uint64)
    )


def test_pack_empty() -> None:
    spec = PackingSpec(n_length=512)
    assert spec.pack(np.zeros(0, dtype=np.uint64)) == []
    assert spec.unpack([], 0, 1).size == 0


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    precision=st.sampled_from([1, 8, 16, 40]),
    summands=st.sampled_from([1, 3, 100]),
    length=st.integers(0, 120),
)
def test_pack_unpack_round_trip(
    data: st.DataObject, precision: int, summands: int, length: int
) -> None:
    spec = PackingSpec(precision_bits=precision, max_summands=summands, n_length=512)
    k = data.draw(st.integers(1, summands))
    limit = k * spec.summand_max
    values = data.draw(st.lists(st.integers(0, limit), min_size=length, max_size=length))
    q = np.array(values, dtype=np.uint64)
    packed = spec.pack(q)
    assert len(packed) == spec.n_ciphertexts(length)
    assert all(0 <= m < 2 ** (spec.n_length - 1) for m in packed)
    np.testing.assert_array_equal(spec.unpack(packed, length, k), q)


def test_full_slots_do_not_carry() -> None:
    """K summands of the largest value fill a slot exactly up to K·L without a carry."""
    spec = PackingSpec(precision_bits=16, max_summands=8, n_length=512)
    s = spec.slots_per_ciphertext
    one = spec.pack(np.full(s, spec.levels, dtype=np.uint64))[0]
    total = one * 8
    np.testing.assert_array_equal(spec.unpack([total], s, 8), np.full(s, 8 * spec.levels))


# -- unpack range checks ---------------------------------------------------------------------
@pytest.fixture
def small_spec() -> PackingSpec:
    return PackingSpec(precision_bits=8, max_summands=4, n_length=256)  # 10-bit slots, 25 slots


def test_unpack_slot_above_limit(small_spec: PackingSpec) -> None:
    w, s = small_spec.slot_bits, small_spec.slots_per_ciphertext
    length = 2 * s + 5
    q = np.full(length, 7, dtype=np.uint64)
    packed = small_spec.pack(q)
    # summands=2: limit 2·255 = 510; put 511 in value 31 (ciphertext 1, slot 6)
    packed[1] += (511 - 7) << (w * 6)
    with pytest.raises(SlotRangeError, match="value 31 ") as info:
        small_spec.unpack(packed, length, 2)
    assert (info.value.position, info.value.ciphertext) == (31, 1)
    # exactly at the limit is legal
    packed[1] -= 1 << (w * 6)
    assert small_spec.unpack(packed, length, 2)[31] == 510


def test_unpack_reports_first_offender(small_spec: PackingSpec) -> None:
    w, s = small_spec.slot_bits, small_spec.slots_per_ciphertext
    packed = small_spec.pack(np.zeros(3 * s, dtype=np.uint64))
    packed[2] += 1000 << (w * 3)
    packed[1] += 1000 << (w * 20)
    with pytest.raises(SlotRangeError) as info:
        small_spec.unpack(packed, 3 * s, 1)
    assert (info.value.position, info.value.ciphertext) == (s + 20, 1)


def test_unpack_padding_slot(small_spec: PackingSpec) -> None:
    w, s = small_spec.slot_bits, small_spec.slots_per_ciphertext
    length = s + 4  # ciphertext 1 holds values s..s+3, then 21 padding slots
    packed = small_spec.pack(np.ones(length, dtype=np.uint64))
    packed[1] += 1 << (w * 10)
    with pytest.raises(SlotRangeError, match="padding slot") as info:
        small_spec.unpack(packed, length, 1)
    assert (info.value.position, info.value.ciphertext) == (s + 10, 1)


def test_unpack_bits_above_last_slot(small_spec: PackingSpec) -> None:
    w, s = small_spec.slot_bits, small_spec.slots_per_ciphertext
    packed = small_spec.pack(np.ones(2 * s, dtype=np.uint64))
    packed[1] += 1 << (s * w)
    with pytest.raises(SlotRangeError, match="bits above its last slot") as info:
        small_spec.unpack(packed, 2 * s, 1)
    assert (info.value.position, info.value.ciphertext) == (s, 1)
    with pytest.raises(SlotRangeError) as info:
        small_spec.unpack([-1, 0], 2 * s, 1)
    assert (info.value.position, info.value.ciphertext) == (0, 0)


def test_unpack_zero_summands_requires_zero(small_spec: PackingSpec) -> None:
    assert small_spec.unpack([0], 3, 0).tolist() == [0, 0, 0]
    with pytest.raises(SlotRangeError):
        small_spec.unpack([1], 3, 0)


def test_unpack_wrong_count(small_spec: PackingSpec) -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        small_spec.unpack([0, 0], 3, 1)
    with pytest.raises(ValueError, match="cannot hold"):
        small_spec.unpack([], 3, 1)
