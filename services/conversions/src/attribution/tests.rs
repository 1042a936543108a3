use proptest::prelude::*;

use super::*;

const MODELS: [AttributionModel; 5] = [
    AttributionModel::LastTouch,
    AttributionModel::FirstTouch,
    AttributionModel::Linear,
    AttributionModel::PositionBased,
    AttributionModel::TimeDecay,
];

fn chain(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("p{i}")).collect()
}

#[test]
fn model_weights() {
    let t = [0, 10, 20, 30, 40];
    assert_eq!(
        weights(AttributionModel::LastTouch, 1, 50, &t),
        [0, 0, 0, 0, 1]
    );
    assert_eq!(
        weights(AttributionModel::FirstTouch, 1, 50, &t),
        [1, 0, 0, 0, 0]
    );
    assert_eq!(weights(AttributionModel::Linear, 1, 50, &t), [1; 5]);
    // 40 / 20 / 40: 6/15, 1/15 x3, 6/15.
    assert_eq!(
        weights(AttributionModel::PositionBased, 1, 50, &t),
        [6, 1, 1, 1, 6]
    );
    assert_eq!(
        weights(AttributionModel::PositionBased, 1, 50, &t[..1]),
        [1]
    );
    assert_eq!(
        weights(AttributionModel::PositionBased, 1, 50, &t[..2]),
        [1, 1]
    );
    assert!(weights(AttributionModel::Linear, 1, 50, &[]).is_empty());
}

#[test]
fn time_decay_halves_per_half_life() {
    // Half-life 10 s: ages 0, 10 s, 20 s, 15 s.
    let w = weights(
        AttributionModel::TimeDecay,
        10,
        100_000,
        &[100_000, 90_000, 80_000, 85_000],
    );
    assert_eq!(w[0], DECAY_ONE);
    assert_eq!(w[1], DECAY_ONE / 2);
    assert_eq!(w[2], DECAY_ONE / 4);
    // 2^32 / 2^1.5 = 1518500249.98...; each step rounds down.
    assert!((1_518_500_240..=1_518_500_250).contains(&w[3]), "{}", w[3]);
    // Very old touches keep a weight of 1, never 0.
    assert_eq!(decay(i64::MAX, 1), 1);
}

#[test]
fn position_based_splits_forty_twenty_forty() {
    let w = weights(AttributionModel::PositionBased, 1, 9, &[1, 2, 3]);
    let (total, parts) = touch_commissions(100_000, &[10_000; 3], &w);
    assert_eq!(total, 100_000);
    assert_eq!(parts, [40_000, 20_000, 40_000]);
}

#[test]
fn largest_remainder_gives_leftovers_to_largest_then_earliest() {
    // 100 in thirds: 33.33 each -> the first gets the extra unit.
    assert_eq!(apportion(100, &[1, 1, 1]), [34, 33, 33]);
    // 10 by 1:2:2 -> 2, 4, 4 exactly.
    assert_eq!(apportion(10, &[1, 2, 2]), [2, 4, 4]);
    // 7 by 1:1:5 -> exact 1, 1, 5.
    assert_eq!(apportion(7, &[1, 1, 5]), [1, 1, 5]);
    // 5 by 3:3:4 -> 1.5, 1.5, 2 -> first of the two halves wins.
    assert_eq!(apportion(5, &[3, 3, 4]), [2, 1, 2]);
    assert_eq!(apportion(5, &[0, 0]), [0, 5]);
}

#[test]
fn commissions_use_each_touchs_rate() {
    // 10000.00 at 5 % and 7 %, linear: 250.00 + 350.00.
    let (total, parts) = touch_commissions(1_000_000, &[500, 700], &[1, 1]);
    assert_eq!((total, parts), (60_000, vec![25_000, 35_000]));
    // 333 minor at 10 %: 33.3 -> 33 in total, split 17/16 in thirds... by LR.
    let (total, parts) = touch_commissions(333, &[1000; 3], &[1, 1, 1]);
    assert_eq!(total, 33);
    assert_eq!(parts, [11, 11, 11]);
}

#[test]
fn chain_split() {
    let s = split_chain(1000, 2000, &chain(3));
    let amounts: Vec<_> = s
        .iter()
        .map(|x| (x.partner.as_str(), x.role, x.amount_minor))
        .collect();
    assert_eq!(
        amounts,
        [
            ("p0", "upstream", 100),
            ("p1", "upstream", 100),
            ("p2", "direct", 800)
        ]
    );
    // 101 at 20 %: upstream 20 -> 10/10; direct 81.
    let s = split_chain(101, 2000, &chain(3));
    assert_eq!(
        s.iter().map(|x| x.amount_minor).collect::<Vec<_>>(),
        [10, 10, 81]
    );
    // 7 at 50 % over 2 upstream hops: 3 -> 2 (origin), 1; direct 4.
    let s = split_chain(7, 5000, &chain(3));
    assert_eq!(
        s.iter().map(|x| x.amount_minor).collect::<Vec<_>>(),
        [2, 1, 4]
    );
    // Direct hop: everything to the sender.
    let s = split_chain(7, 5000, &chain(1));
    assert_eq!(s.iter().map(|x| x.amount_minor).collect::<Vec<_>>(), [7]);
}

#[test]
fn reversals_are_proportional_and_complete() {
    // payout 333 of an order of 1000, refunded 100 then 900.
    let a = reversed(333, 100, 1000);
    let b = reversed(333, 1000, 1000);
    assert_eq!((a, b), (33, 333));
    assert_eq!(reversed(0, 5, 10), 0);
}

proptest! {
    #[test]
    fn shares_sum_to_the_commission_for_every_model(
        amount in 1u64..=1_000_000_000_000_000,
        touches in proptest::collection::vec(
            (0i64..7 * 86_400_000, 0u32..=10_000, 1usize..=8, 0u32..=10_000),
            1..12,
        ),
        half_life in 1u64..=30 * 86_400,
    ) {
        let occurred = 7 * 86_400_000i64;
        let mut redeemed: Vec<i64> = touches.iter().map(|t| t.0).collect();
        redeemed.sort_unstable();
        let rates: Vec<u32> = touches.iter().map(|t| t.1).collect();
        for model in MODELS {
            let w = weights(model, half_life, occurred, &redeemed);
            prop_assert_eq!(w.len(), redeemed.len());
            prop_assert!(w.iter().any(|&x| x > 0));
            let (total, parts) = touch_commissions(amount, &rates, &w);
            prop_assert_eq!(parts.iter().sum::<u64>(), total);
            // The total is the floor of the exact weighted commission.
            let sum_w: u128 = w.iter().map(|&x| u128::from(x)).sum();
            let exact: u128 = rates.iter().zip(&w)
                .map(|(&r, &x)| u128::from(amount) * u128::from(r) * u128::from(x))
                .sum::<u128>() / (10_000 * sum_w);
            prop_assert_eq!(u128::from(total), exact);
            prop_assert!(total <= amount);
            for (i, (&c, t)) in parts.iter().zip(&touches).enumerate() {
                // Each touch within one unit of its exact value.
                let num = u128::from(amount) * u128::from(rates[i]) * u128::from(w[i]);
                let floor = num / (10_000 * sum_w);
                prop_assert!(u128::from(c) == floor || u128::from(c) == floor + 1);
                let shares = split_chain(c, t.3, &chain(t.2));
                prop_assert_eq!(shares.len(), t.2);
                prop_assert_eq!(shares.iter().map(|s| s.amount_minor).sum::<u64>(), c);
                // Upstream hops differ by at most one unit.
                let ups: Vec<u64> = shares.iter().filter(|s| s.role == "upstream").map(|s| s.amount_minor).collect();
                if let (Some(lo), Some(hi)) = (ups.iter().min(), ups.iter().max()) {
                    prop_assert!(hi - lo <= 1);
                }
            }
        }
    }

    #[test]
    fn apportion_is_exact(total in 0u64..=u64::MAX / 2, w in proptest::collection::vec(0u64..=1 << 33, 1..10)) {
        let parts = apportion(total, &w);
        prop_assert_eq!(parts.iter().map(|&p| u128::from(p)).sum::<u128>(), u128::from(total));
    }

    #[test]
    fn cumulative_refunds_never_over_reverse(
        payout in 0u64..=1_000_000_000,
        amount in 1u64..=1_000_000_000,
        cuts in proptest::collection::vec(1u64..=1_000_000_000, 0..6),
    ) {
        let mut basis = 0u64;
        let mut reversed_so_far = 0u64;
        for c in cuts {
            let next = (basis + c).min(amount);
            let delta = reversed(payout, next, amount) - reversed(payout, basis, amount);
            reversed_so_far += delta;
            basis = next;
            prop_assert!(reversed_so_far <= payout);
        }
        prop_assert_eq!(reversed_so_far + (reversed(payout, amount, amount) - reversed(payout, basis, amount)), payout);
    }
}
