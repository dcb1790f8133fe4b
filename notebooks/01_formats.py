# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 1: Floating-point formats
#
# Mixed-precision training stores most numbers in 16 bits instead of 32 (and, on the
# newest hardware, in 8). Before training anything, this lesson looks at what those
# bits can hold:
#
# - the bit layout of float32, float16, bfloat16 and the two fp8 formats;
# - the **range** (how large and how small a number can be) and the **precision**
#   (how close two neighbouring numbers are) that each layout buys;
# - the **subnormal** numbers at the bottom of the range;
# - **round-to-nearest-even**, the rule every cast applies, on real values;
# - what a cast does to a whole array;
# - and a first consequence for training: a long sum kept in float16 goes wrong, which
#   is why dot products and reductions accumulate in float32 (Micikevicius et al.,
#   "Mixed Precision Training", ICLR 2018, sec. 3.3).
#
# Every limit below comes from `minimp.formats`, which derives it from the bit layout,
# and every rounding is checked against NumPy's and `ml_dtypes`' own casts.

# %%
import math

import numpy as np
from matplotlib.figure import Figure

import minimp
from minimp import formats
from minimp.formats import BFLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2, FLOAT16, FLOAT32
from minimp.tools import plots
from minimp.tools.lessons import claim, save_figure, show
from minimp.tools.plots import COLORS

# The formats this lesson compares (minimp.formats also has the fp6/fp4 MX elements and
# the e8m0 block scale, for per-block scaling)
FORMATS = (FLOAT32, FLOAT16, BFLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2)

SEED = 0  # every random array below
N_CAST = 200_000  # values in the synthetic array cast to each format
N_ONES = 3000  # length of the float16 running sum of ones: well past where it stalls
K_VALUES = (64, 128, 256, 512, 1024, 2048, 4096)  # dot-product lengths in the matmul test
MN = 64  # the test matmul's output is MN x MN; errors are taken over it

rng = np.random.default_rng(SEED)

# %% [markdown]
# ## 1. Three fields: sign, exponent, fraction
#
# A binary floating-point number is stored as a sign bit `s`, an exponent field `E` of
# `e` bits and a fraction (or mantissa) field `M` of `m` bits. For a *normal* number
# the value is
#
# $$x = (-1)^s \times \left(1 + \frac{M}{2^m}\right) \times 2^{E - \text{bias}}$$
#
# The leading 1 is implicit: it is not stored, so a normal number has `m + 1`
# significant bits. The formats differ only in `e`, `m` and the bias (and fp8 e4m3fn,
# the "fn" variant, gives up infinity to keep one more binade of finite numbers):

# %%
print(f"{'format':15} {'bits':>4} {'exponent':>8} {'fraction':>8} {'bias':>5}  inf?")
for fmt in FORMATS:
    print(
        f"{fmt.name:15} {fmt.bits:>4} {fmt.exponent_bits:>8} {fmt.mantissa_bits:>8} "
        f"{fmt.bias:>5}  {'yes' if fmt.has_inf else 'no (overflow is NaN)'}"
    )

# %% [markdown]
# Here are the stored bits of a few values, `sign exponent fraction`, from
# `formats.bit_string`. The cell also decodes the fields that `formats.split_bits`
# reads from the stored bit pattern with the formula above, and checks that they give
# back the stored value (`formats.round_to`: the value after the cast). 0.1 has no
# exact binary representation, so each format stores its own approximation of it.


# %%
def decode(value: float, fmt: formats.Format) -> float:
    """The value a normal number's stored fields stand for, by the formula above."""
    s, e, m = (int(f) for f in formats.split_bits(np.asarray(value), fmt))
    return (-1) ** s * (1 + m / 2**fmt.mantissa_bits) * 2.0 ** (e - fmt.bias)


decoded_ok, error_of_tenth = True, {}
for value in (1.0, -2.5, 0.1):
    print(f"x = {value}")
    for fmt in FORMATS:
        stored = float(formats.round_to(value, fmt))
        decoded_ok &= decode(value, fmt) == stored
        error = abs(stored - value) / abs(value)
        if value == 0.1:
            error_of_tenth[fmt.name] = error
        print(
            f"  {fmt.name:14} {formats.bit_string(value, fmt):38} stored {stored!r:22} "
            f"relative error {error:.1e}"
        )
print("decoding the fields gives the stored value every time:", decoded_ok)

# %% [markdown]
# Decoding the fields gives the stored value every time (the `True` printed above);
# float16 stores 1.0 as `0 01111 0000000000`. The fewer fraction bits a format has, the
# larger its error on 0.1 (the relative errors printed for x = 0.1): from parts per
# hundred million in float32 to percents in the fp8 formats.

# %%
claim(decoded_ok, "decoding the fields gives the stored value every time")
claim(
    formats.bit_string(1.0, FLOAT16) == "0 01111 0000000000", "float16 stores 1.0 as 0 01111 0..."
)
by_bits = sorted(FORMATS, key=lambda fmt: -fmt.mantissa_bits)
tenth = [error_of_tenth[fmt.name] for fmt in by_bits]
claim(tenth == sorted(tenth), "the fewer fraction bits, the larger the error on 0.1", errors=tenth)
claim(
    tenth[0] < 1e-7 and tenth[-1] > 0.01,
    "from parts per hundred million in float32 to percents in fp8",
    errors=tenth,
)

# %% [markdown]
# ## 2. Range and precision
#
# Four numbers describe a format:
#
# - `max`, the largest finite value: all-ones fraction, largest exponent;
# - `min_normal` = 2^(1 - bias), the smallest normal number;
# - `min_subnormal`, the smallest positive number (section 3);
# - `eps` = 2^-m, the gap between 1 and the next number: the relative precision.
#
# The gap between a number and its upper neighbour is its **ulp** ("unit in the last
# place"). Between two powers of two, in a *binade* [2^k, 2^(k+1)), a format holds 2^m
# equally spaced numbers, so there ulp = eps × 2^k: the gap grows with the number,
# and the *relative* gap stays between eps/2 and eps.
#
# **Predict** before you run the cell: float16 and bfloat16 both have 16 bits. Which
# one spans more decades of magnitude, and which one has more decimal digits?

# %%
print(
    f"{'format':15} {'max':>10} {'min_normal':>11} {'min_subnormal':>14} {'eps':>9}"
    f" {'decades':>8} {'digits':>7}"
)
decades, digits = {}, {}
for fmt in FORMATS:
    # decades of magnitude from the smallest to the largest positive number, and
    # decimal digits of precision (log10 of 1/eps)
    decades[fmt.name] = math.log10(fmt.max / fmt.min_subnormal)
    digits[fmt.name] = -math.log10(fmt.eps)
    print(
        f"{fmt.name:15} {fmt.max:>10.4g} {fmt.min_normal:>11.3g} {fmt.min_subnormal:>14.3g}"
        f" {fmt.eps:>9.3g} {decades[fmt.name]:>8.1f} {digits[fmt.name]:>7.1f}"
    )

# float16's max from its fields: fraction all ones (1 + 1023/1024), top exponent 30 - 15.
fp16_max_from_bits = (2 - FLOAT16.eps) * 2.0 ** (2**FLOAT16.exponent_bits - 2 - FLOAT16.bias)
print(f"\nfloat16 max = (2 - 2^-10) x 2^15 = {fp16_max_from_bits:g}")
print(
    f"float16 min normal = 2^{math.log2(FLOAT16.min_normal):.0f}, "
    f"min subnormal = 2^{math.log2(FLOAT16.min_subnormal):.0f}, "
    f"eps = 2^{math.log2(FLOAT16.eps):.0f}"
)

# %% [markdown]
# float16's max, 65504, is what its fields give. float16 keeps about three decimal
# digits but spans only about twelve decades of magnitude (the `digits` and `decades`
# columns), against float32's eighty-odd. bfloat16 makes the other trade: it keeps
# float32's 8 exponent bits, and so nearly all of its range, and pays with fraction
# bits (eps = 2^-7, about two digits). The fp8 formats have very little of either.

# %%
claim(FLOAT16.max == fp16_max_from_bits == 65504, "float16's max is 65504, from its fields")
claim(round(decades["float16"]) == 12, "float16 spans about twelve decades", decades=decades)
claim(80 < decades["float32"] < 90, "float32 spans eighty-odd decades", decades=decades)
claim(
    decades["float32"] - 5 < decades["bfloat16"] < decades["float32"],
    "bfloat16 keeps nearly all of float32's range",
    decades=decades,
)
claim(round(digits["float16"]) == 3 and round(digits["bfloat16"]) == 2, "3 and 2 digits", d=digits)
claim(BFLOAT16.eps == 2.0**-7, "bfloat16's eps is 2^-7")
#
# The number line shows where each format can hold a value (figure `number_line`):

# %%
fig = plots.number_line(FORMATS)
save_figure(fig, "number_line")
show(fig)

# %% [markdown]
# The ulp grows with the number. In float16 (`np.spacing` gives the gap to the next
# float16 up, and we compare it with eps × 2^k):

# %%
print(f"{'x':>11} {'ulp(x)':>10} {'eps x 2^k':>10}")
ulps = {}
for x in (2.0**-14, 0.001, 1.0, 3.0, 1000.0, 2048.0, 60000.0):
    ulp = float(np.spacing(np.float16(x)))
    k = math.floor(math.log2(x))
    ulps[x] = ulp
    print(f"{x:>11.6g} {ulp:>10.3g} {FLOAT16.eps * 2.0**k:>10.3g}")

# %% [markdown]
# Near 1 neighbouring float16 numbers are eps apart; from 2048 on they are 2 apart, so
# float16 cannot hold odd integers there; near its max they are 32 apart. Keep the
# 2048 in mind for section 6.

# %%
claim(ulps[1.0] == FLOAT16.eps, "near 1 neighbouring float16 numbers are eps apart")
claim(ulps[2048.0] == 2.0, "from 2048 on they are 2 apart", ulp=ulps[2048.0])
claim(ulps[60000.0] == 32.0, "near its max they are 32 apart", ulp=ulps[60000.0])

# %% [markdown]
# ## 3. Subnormals: the bottom of the range
#
# Below `min_normal` the exponent field is 0 and the rule changes: the implicit bit is
# 0 instead of 1, and the exponent stays at the smallest normal one,
#
# $$x = (-1)^s \times \frac{M}{2^m} \times 2^{1 - \text{bias}}$$
#
# These **subnormal** numbers fill the gap between 0 and `min_normal` with a constant
# spacing, `min_subnormal` = 2^(1 - bias - m), so values shrink to zero gradually
# instead of dropping off a cliff at `min_normal`. The price is precision: a subnormal
# has only as many significant bits as its fraction field has after its leading zeros.

# %%
print(f"{'x (float16)':>22} {'bits':>18} {'significant bits':>17} {'relative gap':>13}")
tiny = FLOAT16.min_subnormal
subnormal_ok = True
for x in (FLOAT16.min_normal, FLOAT16.min_normal / 2, 3 * tiny, tiny):
    s, e, m = (int(f) for f in formats.split_bits(np.asarray(x), FLOAT16))
    significant = FLOAT16.mantissa_bits + 1 if e else m.bit_length()
    if e == 0:  # the subnormal formula, with no implicit 1
        subnormal_ok &= (m / 2**FLOAT16.mantissa_bits) * FLOAT16.min_normal == x
    gap = float(np.spacing(np.float16(x))) / x
    print(f"{x:>22.6g} {formats.bit_string(x, FLOAT16):>18} {significant:>17} {gap:>13.3g}")
print("the subnormal formula decodes every subnormal above:", subnormal_ok)

# %% [markdown]
# The subnormal formula decodes every subnormal above (`True`). The smallest normal
# number, `0 00001 0000000000`, has 11 significant bits and a relative gap of eps; the
# smallest subnormal, `0 00000 0000000001`, has a single significant bit, and the next
# number is twice it.

# %%
claim(subnormal_ok, "the subnormal formula decodes every subnormal above")
claim(formats.bit_string(FLOAT16.min_normal, FLOAT16) == "0 00001 0000000000", "min normal bits")
claim(formats.bit_string(tiny, FLOAT16) == "0 00000 0000000001", "min subnormal bits")
claim(float(np.spacing(np.float16(FLOAT16.min_normal))) / FLOAT16.min_normal == FLOAT16.eps, "eps")
claim(float(np.spacing(np.float16(tiny))) == tiny, "the next number above 2^-24 is twice it")
#
# Anything smaller than *half* of `min_subnormal` has no float16 neighbour closer than
# 0, and the cast returns 0. We call a nonzero value whose cast is 0 **flushed to
# zero** (underflow). This is where small gradients die in float16 training
# (sec. 3.1-3.2; lesson 2 measures it on a real network).

# %% [markdown]
# ## 4. Round to nearest, ties to even
#
# A value between two neighbouring numbers of the format is rounded to the nearer one.
# An exact tie goes to the neighbour whose last fraction bit is 0, the "even" one:
# IEEE 754's default rule, and what every cast in mixed-precision training does.
# Beyond `max`, a value overflows to infinity, but only if it would round past `max`
# with the exponent range extended; up to the midpoint it rounds down to `max`.
#
# Predict each result before you run the cell. The cell rounds with `formats.round_to`
# (which works from the format's fields) and checks it against the cast that NumPy
# (float16) and `ml_dtypes` (bfloat16) perform.

# %%
cases = [
    ("2^-25 (half of min subnormal)", 2.0**-25, FLOAT16),
    ("1.5 x 2^-25", 1.5 * 2.0**-25, FLOAT16),
    ("65519", 65519.0, FLOAT16),
    ("65520", 65520.0, FLOAT16),
    ("2048 + 1", 2048.0 + 1.0, FLOAT16),
    ("2048 + 3", 2048.0 + 3.0, FLOAT16),
    ("1 + 2^-8", 1.0 + 2.0**-8, BFLOAT16),
]
rounded, agrees = {}, True
with np.errstate(over="ignore"):  # 65520 -> inf is the point, not an accident
    for label, value, fmt in cases:
        result = float(formats.round_to(value, fmt))
        oracle = float(np.float32(value).astype(fmt.dtype))  # every value here is a float32
        agrees &= result == oracle
        rounded[label] = result
        print(f"{label:32} -> {fmt.name:9} {result!r:24} {formats.bit_string(value, fmt)}")
print("minimp's rounding and the library casts agree:", agrees)

# %% [markdown]
# What happened:
#
# - **2^-25** lies exactly halfway between 0 and 2^-24, float16's smallest subnormal.
#   It is a tie, and 0 has the even last bit (2^-24 has fraction `...0001`), so it
#   rounds to 0: flushed to zero. Anything even slightly larger, like **1.5 × 2^-25**,
#   is nearer 2^-24 and survives, with a single significant bit.
# - **65519** is below the midpoint between `max` = 65504 and the next power of two
#   (which float16 cannot hold), so it rounds down to 65504. **65520** is exactly that
#   midpoint; 65504 has an odd fraction (all ones), so the tie goes "up", and the value
#   overflows to inf.
# - **2048 + 1** = 2049 sits halfway between 2048 and 2050 (the ulp is 2 there); 2048
#   is even, so 2049 becomes 2048. But **2048 + 3** = 2051, halfway between 2050 and
#   2052, rounds *up* to 2052: ties do not always round down, they balance out.
# - In bfloat16, with 7 fraction bits, **1 + 2^-8** is half of eps above 1: a tie,
#   back to 1.
#
# And minimp's rounding agrees with the library casts on every case (`True` above).

# %%
claim(agrees, "minimp's rounding and the library casts agree")
claim(rounded["2^-25 (half of min subnormal)"] == 0.0, "2^-25 rounds to 0")
claim(rounded["1.5 x 2^-25"] == FLOAT16.min_subnormal == 2.0**-24, "1.5 x 2^-25 survives as 2^-24")
claim(rounded["65519"] == FLOAT16.max, "65519 rounds down to 65504")
claim(math.isinf(rounded["65520"]), "65520 overflows to inf")
claim(rounded["2048 + 1"] == 2048.0, "2049 becomes 2048")
claim(rounded["2048 + 3"] == 2052.0, "2051 rounds up to 2052")
claim(rounded["1 + 2^-8"] == 1.0, "in bfloat16 1 + 2^-8 goes back to 1")

# %% [markdown]
# ## 5. What a cast does to an array
#
# Casting a tensor rounds every element, and each element lands in one of six
# categories (`formats.CATEGORIES`): `zero` (it was 0), `flushed_to_zero` (nonzero, but
# it rounds to 0), `subnormal`, `normal`, `overflow` (it rounds to ±inf, or to NaN in a
# format without inf) and `nan`. `formats.classify` judges each element by its value
# *before* the cast, so an underflow is never mistaken for a true zero;
# `formats.count_categories` counts them.
#
# The array is synthetic: magnitudes spread evenly on a log scale from 2^-40 to 2^20,
# with random signs, a stand-in for the wide spread of gradient magnitudes that
# lesson 2 measures on a real network.
#
# **Predict**: the array spans 60 binades, from 2^-40 to 2^20. Roughly what share of it
# will float16 flush to zero, and what share will bfloat16 flush? (Hint: count binades
# on the number line.)

# %%
LOW, HIGH = -40, 20  # log2 of the smallest and largest magnitudes in the array
x = rng.choice([-1.0, 1.0], N_CAST) * 2.0 ** rng.uniform(LOW, HIGH, N_CAST)
x = x.astype(np.float32)
cast, band_width = {}, {}
print(f"{'format':15}" + "".join(f"{c:>17}" for c in formats.CATEGORIES))
for fmt in (FLOAT16, BFLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2):
    cast[fmt.name] = formats.count_categories(x, fmt, normalize=True)
    print(f"{fmt.name:15}" + "".join(f"{v:>17.1%}" for v in cast[fmt.name].values()))
    # What the number line predicts: the share of [2^LOW, 2^HIGH] (log scale) below half
    # of min_subnormal, and above the midpoint between max and the next power up.
    flush_below = math.log2(fmt.min_subnormal / 2)
    ulp_of_max = 2.0 ** (fmt.max_exponent - fmt.mantissa_bits)
    overflow_above = math.log2(fmt.max + ulp_of_max / 2)
    band_width[fmt.name] = {
        "flushed_to_zero": min(max(flush_below - LOW, 0), HIGH - LOW) / (HIGH - LOW),
        "overflow": min(max(HIGH - overflow_above, 0), HIGH - LOW) / (HIGH - LOW),
    }
print("\npredicted from the formats' limits:")
for name, widths in band_width.items():
    print(f"{name:15} flushed {widths['flushed_to_zero']:.1%}, overflow {widths['overflow']:.1%}")

with np.errstate(invalid="ignore"):
    e4m3_500 = float(formats.round_to(500.0, FLOAT8_E4M3FN))
print(f"\nfloat8_e4m3fn has no inf: 500 becomes {e4m3_500}")

# %% [markdown]
# float16 loses values at both ends: the smallest are flushed to zero, the largest
# overflow, and a band above the flushed ones survives only as subnormals with few
# significant bits. bfloat16, with float32's exponent range, keeps every one of these
# values (each with fewer significant bits). fp8 e4m3fn loses the most at the bottom,
# and what overflows becomes NaN, not inf. The shares are simply the widths of each
# format's bands in the number line above, measured on this array's log scale (the
# prediction printed under the table): where real values sit relative to those bands
# is what loss scaling is about.

# %%
fp16_cast, bf16_cast = cast["float16"], cast["bfloat16"]
claim(
    fp16_cast["flushed_to_zero"] > 0.1 and fp16_cast["overflow"] > 0.01,
    "float16 loses values at both ends",
    cast=fp16_cast,
)
claim(fp16_cast["subnormal"] > 0.05, "a band survives only as subnormals", cast=fp16_cast)
claim(bf16_cast["normal"] == 1.0, "bfloat16 keeps every one of these values", cast=bf16_cast)
claim(
    max(cast, key=lambda f: cast[f]["flushed_to_zero"]) == "float8_e4m3fn",
    "fp8 e4m3fn loses the most at the bottom",
    cast=cast,
)
claim(math.isnan(e4m3_500), "what overflows e4m3fn becomes NaN, not inf", value=e4m3_500)
for name, widths in band_width.items():
    for category, share in widths.items():
        claim(
            abs(cast[name][category] - share) < 0.02,
            "the shares are the widths of each format's bands",
            format=name,
            category=category,
            measured=cast[name][category],
            predicted=share,
        )

# %% [markdown]
# ## 6. Why sums accumulate in float32
#
# Every float16 addition rounds its result back to float16. Keep a running sum of ones
# in float16 and watch what happens when the ulp of the total reaches 2: the sum plus
# 1 is a tie, which rounds to even, back to the sum. We write the float16 loop
# ourselves (Python over `np.float16` scalars, and `np.cumsum` with a float16
# accumulator); NumPy's own `np.sum` of a float16 array does not keep its running
# total in float16.
#
# **Predict**: where does a float16 running sum of 3000 ones stop? (Section 2 told you
# where float16's ulp becomes 2.)

# %%
total = np.float16(0)
for _ in range(N_ONES):
    total = total + np.float16(1)  # float16 + float16: one IEEE float16 rounding
ones = np.ones(N_ONES, dtype=np.float16)
cumsum_total = float(np.cumsum(ones, dtype=np.float16)[-1])
numpy_sum = float(np.sum(ones))
stall_fp16 = 2 / FLOAT16.eps  # the first n with ulp(n) = 2, where n + 1 is a tie
stall_fp32 = 2 / FLOAT32.eps
fp32_stalls = np.float32(stall_fp32) + np.float32(1) == np.float32(stall_fp32)
print(f"float16 loop over {N_ONES} ones:   {float(total):g}")
print(f"np.cumsum(dtype=float16):        {cumsum_total:g}")
print(f"np.sum (not a float16 total):    {numpy_sum:g}")
one_past = float(np.float16(2048) + np.float16(1))
print(f"2 / eps(float16) = {stall_fp16:g}; 2048 + 1 in float16 = {one_past:g}")
print(f"float32 stalls too, at 2 / eps(float32) = {stall_fp32:g}: {bool(fp32_stalls)}")

# %% [markdown]
# The float16 sum stops at 2048 = 2/eps (both float16 totals printed above), far short
# of the true total, and no number of further additions moves it. float32 has the same
# wall, but at 2^24, about sixteen million.

# %%
claim(float(total) == cumsum_total == stall_fp16 == 2048.0, "the float16 sum stops at 2048")
claim(numpy_sum == N_ONES, "np.sum does not keep a float16 total", numpy_sum=numpy_sum)
claim(stall_fp32 == 2.0**24 and bool(fp32_stalls), "float32 has the same wall at 2^24")
#
# A dot product of length K is a sum of K products, so a matrix multiply hits the same
# problem in a milder form: every addition to a float16 running sum rounds, and the
# rounding errors pile up with K. The paper's rule (sec. 3.3) is that float16 products
# are accumulated into float32 and only the result is rounded to float16. That is what
# tensor cores do, and what `minimp`'s float16 matmul does on the CPU: the product of
# two float16 numbers (11 significant bits each) is exact in float32 (24), so it
# upcasts, multiplies in float32 and rounds once.
#
# We measure both on random float16 matrices (standard normal entries, like
# activations and weights), against the exact product computed in float64 from the
# same float16 inputs:
#
# - **(a) float32 accumulation**, `minimp.tensor(a, dtype="float16") @ ...`: one
#   rounding, at the end;
# - **(b) float16 accumulation**, emulated: each product rounded to float16 and added
#   to a float16 running sum, one rounding per step. It is vectorised over the output
#   elements, with a loop over K only. NumPy's own float16 matmul would not do: like
#   `np.sum`, it does not keep its running sum in float16 (and with no BLAS behind it,
#   it is slow);
# - for reference, the exact result rounded once to float16: the best any float16
#   output can be.
#
# The error is the relative error of the whole output, ‖C - C_exact‖ / ‖C_exact‖.
#
# **Predict**: as K grows 64-fold, from 64 to 4096, how much larger will each error
# get: not at all, 8 times (like the square root of K), or 64 times (like K)?


# %%
def relative_error(c: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(c.astype(np.float64) - exact) / np.linalg.norm(exact))


def float16_accumulation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b with a float16 running sum: a float16 multiply and a float16 add per step.

    Each is computed in float32 and rounded once to float16, which is bit-identical to
    IEEE float16 arithmetic (float32 has at least 2 x 11 + 2 significant bits)."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    acc = np.zeros((a.shape[0], b.shape[1]), dtype=np.float16)
    for k in range(a.shape[1]):
        product = (a32[:, k, None] * b32[None, k, :]).astype(np.float16)
        acc = (acc.astype(np.float32) + product.astype(np.float32)).astype(np.float16)
    return acc


errors = {"fp32_acc": [], "fp16_acc": [], "best_fp16": []}
print(f"{'K':>5} {'(a) fp32 accumulation':>22} {'(b) fp16 accumulation':>22} {'best fp16':>10}")
for K in K_VALUES:
    a = rng.standard_normal((MN, K)).astype(np.float16)
    b = rng.standard_normal((K, MN)).astype(np.float16)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    fp32_acc = (minimp.tensor(a, dtype="float16") @ minimp.tensor(b, dtype="float16")).numpy()
    errors["fp32_acc"].append(relative_error(fp32_acc, exact))
    errors["fp16_acc"].append(relative_error(float16_accumulation(a, b), exact))
    errors["best_fp16"].append(relative_error(exact.astype(np.float16), exact))
    print(
        f"{K:>5} {errors['fp32_acc'][-1]:>22.2e} {errors['fp16_acc'][-1]:>22.2e}"
        f" {errors['best_fp16'][-1]:>10.2e}"
    )

# slope of log(error) against log(K): 0.5 means the error grows like sqrt(K)
fp16_slope = float(np.polyfit(np.log(K_VALUES), np.log(errors["fp16_acc"]), 1)[0])
fp32_over_best = max(
    e32 / best for e32, best in zip(errors["fp32_acc"], errors["best_fp16"], strict=True)
)
fp16_over_fp32 = [
    e16 / e32 for e32, e16 in zip(errors["fp32_acc"], errors["fp16_acc"], strict=True)
]
print(
    f"\n(b) grows like K^{fp16_slope:.2f}; (b)/(a) from {fp16_over_fp32[0]:.0f}x at "
    f"K={K_VALUES[0]} to {fp16_over_fp32[-1]:.0f}x at K={K_VALUES[-1]}"
)
print(f"(a) is never more than {fp32_over_best:.6f} x the best float16 answer")

# %% [markdown]
# With float32 accumulation, the error stays flat at float16's own rounding level, as
# small as rounding the exact answer (the printed ratio to the best float16 answer):
# the accumulation adds nothing measurable, and the only loss is storing the result in
# float16. With float16 accumulation the error is several times larger already at the
# shortest K here (the printed (b)/(a)) and keeps growing, roughly like the square root
# of K (the printed exponent; the rounding errors are random and partly cancel). That
# is why the paper (sec. 3.3) accumulates dot products in float32, and runs large
# reductions, such as batch-norm statistics and softmax, in float32 too;
# `minimp.functional`'s sums, means, softmax and losses do the same.

# %%
claim(fp32_over_best < 1.01, "as small as rounding the exact answer", ratio=fp32_over_best)
claim(
    max(errors["fp32_acc"]) / min(errors["fp32_acc"]) < 1.25,
    "float32 accumulation's error stays flat",
    errors=errors["fp32_acc"],
)
claim(all(e < 2 * FLOAT16.eps for e in errors["fp32_acc"]), "at float16's own rounding level")
claim(fp16_over_fp32[0] > 3, "several times larger already at the shortest K", r=fp16_over_fp32)
claim(errors["fp16_acc"] == sorted(errors["fp16_acc"]), "and keeps growing", e=errors["fp16_acc"])
claim(0.35 < fp16_slope < 0.65, "roughly like the square root of K", slope=fp16_slope)

# %%
fig = Figure(figsize=(6.4, 4.2), layout="constrained")
ax = fig.add_subplot()
# The colours of minimp.tools.plots: float16's for the float16 sum, float32's for float32's.
ax.loglog(K_VALUES, errors["best_fp16"], color="0.75", lw=6, label="exact, rounded to float16")
ax.loglog(K_VALUES, errors["fp32_acc"], "s-", color=COLORS["float32"], label="(a) float32 sum")
ax.loglog(K_VALUES, errors["fp16_acc"], "o-", color=COLORS["float16"], label="(b) float16 sum")
ax.set_xscale("log", base=2)
ax.set_xlabel("dot-product length K (inner dimension of the matmul)")
ax.set_ylabel("relative error vs float64")
ax.set_title("float16 matmul: where the sum is kept matters", fontsize=11)
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=9)
save_figure(fig, "01_accumulation")
show(fig)

# %% [markdown]
# ## What we measured
#
# - A format is a sign, an exponent and a fraction; float16 has 5 exponent and 10
#   fraction bits, so about three digits over about twelve decades; bfloat16 keeps
#   float32's range with fewer digits.
# - Round-to-nearest-even decides the edge cases: 2^-25 is a tie and flushes to zero,
#   65520 is a tie and overflows, 2048 + 1 is a tie and stays 2048.
# - A float16 running sum stalls at 2048, and a float16-accumulated dot product loses
#   accuracy as it gets longer, while float32 accumulation is as good as float16 output
#   can be: the rule of sec. 3.3.

# %%
print(
    f"float16: max {FLOAT16.max:g}, min normal {FLOAT16.min_normal:.3g}, "
    f"min subnormal {FLOAT16.min_subnormal:.3g}, eps {FLOAT16.eps:.3g}"
)
print(
    f"float16 decades {decades['float16']:.1f}, float32 {decades['float32']:.1f}, "
    f"bfloat16 {decades['bfloat16']:.1f}"
)
print(
    f"2^-25 -> {rounded['2^-25 (half of min subnormal)']:g}, "
    f"1.5 x 2^-25 -> {rounded['1.5 x 2^-25']:.3g}, 65519 -> {rounded['65519']:g}, "
    f"65520 -> {rounded['65520']:g}, 2048 + 1 -> {rounded['2048 + 1']:g}"
)
print(
    f"cast to float16: {cast['float16']['flushed_to_zero']:.1%} flushed, "
    f"{cast['float16']['overflow']:.1%} overflowed; bfloat16: "
    f"{cast['bfloat16']['flushed_to_zero']:.1%} flushed"
)
print(f"float16 running sum of {N_ONES} ones: {float(total):g}")
print(
    f"matmul error at K={K_VALUES[-1]}: fp32 accumulation {errors['fp32_acc'][-1]:.2e}, "
    f"fp16 accumulation {errors['fp16_acc'][-1]:.2e}"
)

# %% [markdown]
# ## Exercises
#
# 1. In section 4, add the case `("2^-24 x 1.5", 1.5 * 2.0**-24, FLOAT16)`. It is
#    halfway between 2^-24 and 2 × 2^-24: predict which neighbour the tie goes to
#    (look at the last fraction bit of each), then rerun the cell.
# 2. Set `LOW, HIGH = -30, 10` in section 5 and predict float16's flushed and overflow
#    shares from the number line before you rerun; the cell prints the prediction from
#    the band widths beside the measurement.
# 3. In section 6, replace the ones by `np.float16(0.1)`: predict where the float16
#    running sum of 0.1s stalls (hint: the sum stops when 0.1 is at most half an ulp of
#    it), then rerun and compare with `np.sum`.
