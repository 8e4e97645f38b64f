//! The crate's one seeded random generator, SplitMix64 (Steele, Lea & Flood 2014), in the three
//! forms the crate draws with:
//!
//! * [`SplitMix64`], sequential: the corpus shuffle, the probe's splits and folds, the concept
//!   split of `detect` ([`SplitMix64::below`] and [`SplitMix64::shuffle`] are unbiased);
//! * [`uniform_below`], counter-based (a draw is a pure function of seed and counter, so every
//!   backend and any batch split draw the same): the builder's reservoirs;
//! * [`CounterRng`], counter-based streams: the synthetic activations (one stream per feature
//!   or row, so the output does not depend on the thread count).
//!
//! No draw depends on anything but its seed: the same seed gives the same numbers on every
//! machine and thread count.

/// SplitMix64's increment, ⌊2⁶⁴/φ⌋ (odd).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function applied to `z + γ`: a well-mixed 64-bit value of `z`. The
/// sequential generator's draw from state `s` is `mix(s)`.
pub fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `⌊x · n / 2⁶⁴⌋`: Lemire's multiply-shift map of a 64-bit value onto `[0, n)`.
fn multiply_shift(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Sequential SplitMix64.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator seeded with `seed` (its state; the first draw is `mix(seed)`).
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        let z = mix(self.0);
        self.0 = self.0.wrapping_add(GAMMA);
        z
    }

    /// A uniform integer in `[0, n)`, `n > 0`: Lemire's multiply-shift with rejection, so exactly
    /// uniform (a draw is rejected with probability below `n / 2⁶⁴`).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "below(0)");
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// Fisher–Yates shuffle in place, every permutation equally likely (each swap partner drawn
    /// with [`SplitMix64::below`]).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// A uniform integer in `[0, n)` that depends only on `seed` and `counter`: SplitMix64's output
/// for state `seed·γ + counter`, mapped by Lemire's multiply-shift (no rejection, so its bias is
/// below `n / 2⁶⁴`: the price of a draw that any backend computes alone). The builder's
/// reservoirs draw with it (`counter` = the stream row), so they are reproducible on every
/// backend and batch size.
pub fn uniform_below(seed: u64, counter: u64, n: u64) -> u64 {
    multiply_shift(mix(seed.wrapping_mul(GAMMA).wrapping_add(counter)), n)
}

/// A counter-based generator: stream `(seed, stream)`, draw `i` is
/// `mix(base ^ i·γ)` with `base = mix(mix(seed) ^ stream·0xD1B5_4A32_D192_ED03)`. Streams are
/// independent of each other, so work split over threads by stream draws the same numbers.
#[derive(Debug, Clone)]
pub struct CounterRng {
    base: u64,
    i: u64,
}

impl CounterRng {
    /// Stream `stream` of `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        CounterRng {
            base: mix(mix(seed) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)),
            i: 0,
        }
    }

    /// The next 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        self.i += 1;
        mix(self.base ^ self.i.wrapping_mul(GAMMA))
    }

    /// Uniform in (0, 1): the top 53 bits, centred in their interval.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller, cosine branch).
    pub fn gaussian(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_outputs() {
        // The first outputs of SplitMix64 seeded with 0 (reference implementation by Vigna).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = SplitMix64::new(42);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(rng.below(1), 0);
        let big = u64::MAX - 1;
        for _ in 0..100 {
            assert!(rng.below(big) < big);
        }
    }

    /// Every permutation of 4 items is about equally likely (24 of them, 48,000 shuffles).
    #[test]
    fn shuffle_is_uniform_over_permutations() {
        let mut rng = SplitMix64::new(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..48_000 {
            let mut v = [0u8, 1, 2, 3];
            rng.shuffle(&mut v);
            *counts.entry(v).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 24);
        for (p, c) in &counts {
            assert!((1_700..2_300).contains(c), "{p:?}: {c}");
        }
        let mut empty: [u8; 0] = [];
        rng.shuffle(&mut empty);
        let mut one = [9];
        rng.shuffle(&mut one);
        assert_eq!(one, [9]);
    }

    /// The counter-based forms are the sequential generator's outputs at a computed state.
    #[test]
    fn counter_forms_are_splitmix64_at_a_state() {
        for (seed, counter) in [(0u64, 0u64), (3, 17), (u64::MAX, 5)] {
            let state = seed.wrapping_mul(GAMMA).wrapping_add(counter);
            let x = SplitMix64::new(state).next_u64();
            for n in [1u64, 2, 1000, u64::MAX] {
                assert_eq!(uniform_below(seed, counter, n), multiply_shift(x, n));
                assert!(uniform_below(seed, counter, n) < n);
            }
        }
        let mut a = CounterRng::new(5, 2);
        let base = mix(mix(5) ^ 2u64.wrapping_mul(0xD1B5_4A32_D192_ED03));
        assert_eq!(a.next_u64(), mix(base ^ GAMMA));
        assert_eq!(a.next_u64(), mix(base ^ 2u64.wrapping_mul(GAMMA)));
        let u = a.uniform();
        assert!(u > 0.0 && u < 1.0);
    }
}
