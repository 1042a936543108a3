//! Attribution arithmetic: model weights, per-touch commissions and chain
//! splits. Pure integer functions, no floating point anywhere.
//!
//! - Weights are non-negative integers; a touch's share of the commission is
//!   `weight / sum(weights)`, so they are exact rationals (linear `1,1,1` is
//!   exactly a third each).
//! - Every split into minor units uses the largest remainder method: each
//!   part gets the floor of its exact value, and the units left over go one
//!   each to the parts with the largest remainders (ties: the earlier part).
//!   The parts therefore always sum to the total and none is negative.

use crossflow_settings::AttributionModel;

/// 2^32: the time-decay weight of a touch at the very moment of the order.
pub const DECAY_ONE: u64 = 1 << 32;

/// `round(2^32 * 2^(-2^i / 1024))` for i in 0..10: multiplying by entry i
/// (then shifting right 32) halves a weight over `2^i / 1024` half-lives.
/// Computed with 60-digit decimal arithmetic.
const DECAY_STEPS: [u64; 10] = [
    4_292_061_010,
    4_289_156_690,
    4_283_353_945,
    4_271_771_996,
    4_248_701_965,
    4_202_935_003,
    4_112_874_773,
    3_938_502_376,
    3_611_622_603,
    3_037_000_500,
];

/// The model's name in ledger entries and responses.
pub fn model_name(m: AttributionModel) -> &'static str {
    match m {
        AttributionModel::LastTouch => "last_touch",
        AttributionModel::FirstTouch => "first_touch",
        AttributionModel::Linear => "linear",
        AttributionModel::PositionBased => "position_based",
        AttributionModel::TimeDecay => "time_decay",
    }
}

/// Integer weights of touches landed at `redeemed_at_ms` (oldest first) for
/// an order at `occurred_at_ms`. Empty in, empty out; otherwise at least one
/// weight is positive.
///
/// - last touch: `0, …, 0, 1`; first touch: `1, 0, …, 0`; linear: all `1`.
/// - position-based: one touch `1`; two `1, 1`; n ≥ 3: `2(n-2)` for the first
///   and the last, `1` for each of the n-2 between (40 % / 20 % / 40 %).
/// - time decay: `2^32 · 2^(-age / half_life)`, with age rounded down to
///   1/1024 of a half-life and each step rounded down, but never below 1.
pub fn weights(
    model: AttributionModel,
    half_life_secs: u64,
    occurred_at_ms: i64,
    redeemed_at_ms: &[i64],
) -> Vec<u64> {
    let n = redeemed_at_ms.len();
    if n == 0 {
        return Vec::new();
    }
    match model {
        AttributionModel::LastTouch => (0..n).map(|i| u64::from(i == n - 1)).collect(),
        AttributionModel::FirstTouch => (0..n).map(|i| u64::from(i == 0)).collect(),
        AttributionModel::Linear => vec![1; n],
        AttributionModel::PositionBased => match n {
            1 => vec![1],
            2 => vec![1, 1],
            _ => {
                let edge = 2 * (n as u64 - 2);
                (0..n)
                    .map(|i| if i == 0 || i == n - 1 { edge } else { 1 })
                    .collect()
            }
        },
        AttributionModel::TimeDecay => redeemed_at_ms
            .iter()
            .map(|&t| decay(occurred_at_ms.saturating_sub(t).max(0), half_life_secs))
            .collect(),
    }
}

/// `2^32 · 2^(-age_ms / (half_life_secs · 1000))`, at least 1.
fn decay(age_ms: i64, half_life_secs: u64) -> u64 {
    let half_life_ms = u128::from(half_life_secs.max(1)) * 1000;
    let steps = (age_ms.max(0) as u128) * 1024 / half_life_ms;
    let halvings = steps >> 10;
    if halvings >= 32 {
        return 1;
    }
    let mut w = u128::from(DECAY_ONE >> halvings);
    let frac = (steps & 1023) as usize;
    for (i, step) in DECAY_STEPS.iter().enumerate() {
        if frac & (1 << i) != 0 {
            w = (w * u128::from(*step)) >> 32;
        }
    }
    (w as u64).max(1)
}

/// Largest remainder: splits `floor(sum(numerators) / denominator)` into
/// parts whose exact values are `numerators[i] / denominator`. Each part is
/// the floor of its exact value or one more; the parts sum to the total.
/// A zero denominator gives all zeros.
pub fn largest_remainder(numerators: &[u128], denominator: u128) -> Vec<u128> {
    if denominator == 0 {
        return vec![0; numerators.len()];
    }
    let mut parts: Vec<u128> = numerators.iter().map(|n| n / denominator).collect();
    let total: u128 = numerators.iter().sum::<u128>() / denominator;
    let given: u128 = parts.iter().sum();
    let mut left = total - given;
    let mut order: Vec<usize> = (0..numerators.len()).collect();
    // Largest remainder first; ties go to the earlier part (stable sort).
    order.sort_by(|&a, &b| (numerators[b] % denominator).cmp(&(numerators[a] % denominator)));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

/// Splits `total` into parts proportional to `weights` (all zero weights:
/// everything to the last part). Exact: the parts sum to `total`.
pub fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if weights.is_empty() {
        return Vec::new();
    }
    if sum == 0 {
        let mut v = vec![0; weights.len()];
        if let Some(last) = v.last_mut() {
            *last = total;
        }
        return v;
    }
    let nums: Vec<u128> = weights
        .iter()
        .map(|&w| u128::from(total) * u128::from(w))
        .collect();
    largest_remainder(&nums, sum)
        .into_iter()
        .map(|p| p as u64)
        .collect()
}

/// The commission of an order of `amount_minor` over touches with their own
/// rates (bps of the amount) and weights: the total is
/// `floor(sum(amount · rate_i · weight_i) / (10000 · sum(weights)))` and
/// touch i gets its exact value `amount · rate_i · weight_i / (10000 ·
/// sum(weights))` rounded by largest remainder. Returns (total, per touch).
pub fn touch_commissions(amount_minor: u64, rates_bps: &[u32], weights: &[u64]) -> (u64, Vec<u64>) {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let den = 10_000u128 * sum;
    let nums: Vec<u128> = rates_bps
        .iter()
        .zip(weights)
        .map(|(&r, &w)| u128::from(amount_minor) * u128::from(r) * u128::from(w))
        .collect();
    let parts: Vec<u64> = largest_remainder(&nums, den)
        .into_iter()
        .map(|p| p as u64)
        .collect();
    (parts.iter().sum(), parts)
}

/// Who earns what of one touch's commission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub partner: String,
    /// `direct` for the hop's sender, `upstream` for earlier hops.
    pub role: &'static str,
    pub amount_minor: u64,
}

/// Splits a touch's `commission` along its `chain` (origin first, ending
/// with the direct referrer): upstream hops (all but the last) together get
/// `floor(commission · upstream_share_bps / 10000)`, divided equally with
/// the leftover units going to the hops nearest the origin first; the direct
/// referrer keeps the rest. A one-hop chain gives everything to the direct
/// referrer. A partner appearing twice gets two shares.
pub fn split_chain(commission: u64, upstream_share_bps: u32, chain: &[String]) -> Vec<Share> {
    let Some((direct, upstream)) = chain.split_last() else {
        return Vec::new();
    };
    let up_total = if upstream.is_empty() {
        0
    } else {
        (u128::from(commission) * u128::from(upstream_share_bps.min(10_000)) / 10_000) as u64
    };
    let mut out: Vec<Share> = Vec::with_capacity(chain.len());
    let ups = apportion(up_total, &vec![1; upstream.len()]);
    for (p, amount) in upstream.iter().zip(ups) {
        out.push(Share {
            partner: p.clone(),
            role: "upstream",
            amount_minor: amount,
        });
    }
    out.push(Share {
        partner: direct.clone(),
        role: "direct",
        amount_minor: commission - up_total,
    });
    out
}

/// What remains posted of a payout of `payout` after reversing `basis` of an
/// order of `amount` (refunds, or the whole amount on cancel):
/// `payout - floor(payout · basis / amount)`. Reversals computed as
/// differences of this are exact, never negative, and a full reversal
/// leaves exactly zero.
pub fn reversed(payout: u64, basis: u64, amount: u64) -> u64 {
    if amount == 0 {
        return 0;
    }
    (u128::from(payout) * u128::from(basis.min(amount)) / u128::from(amount)) as u64
}

#[cfg(test)]
mod tests;
