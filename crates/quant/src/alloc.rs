//! Bit allocation under a size budget: each unit (e.g. one routed expert)
//! picks one of its candidate formats, each with a size in bits and a
//! cost (its measured error), so that the total size fits the budget and
//! the total cost is as small as the greedy solution of the multiple-choice
//! knapsack on each unit's lower convex hull makes it.
//!
//! The greedy: every unit starts at its smallest candidate; each step takes
//! the upgrade, over all units, that buys the most cost reduction per added
//! bit (the next point of the unit's lower convex hull of (bits, cost), so
//! a unit's upgrades come in order of decreasing return); an upgrade that
//! no longer fits is skipped and the others go on, until none fits. On the
//! hull this is the Lagrangian solution for every budget at which the
//! greedy stops exactly, and never more than one upgrade from it otherwise.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use mm_core::{Error, Result};

/// One candidate of a unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Stored size in bits.
    pub bits: f64,
    /// What choosing it costs (lower is better), e.g. an output error.
    pub cost: f64,
}

/// The lower convex hull of `cands` by bits, as indices into `cands`:
/// increasing bits, strictly decreasing cost, decreasing cost per bit.
fn hull(cands: &[Candidate]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..cands.len()).collect();
    idx.sort_by(|&a, &b| {
        cands[a]
            .bits
            .total_cmp(&cands[b].bits)
            .then(cands[a].cost.total_cmp(&cands[b].cost))
    });
    let mut h: Vec<usize> = Vec::new();
    for i in idx {
        let c = cands[i];
        // Dominated: no fewer bits and no lower cost than the last kept.
        if h.last().is_some_and(|&j| c.cost >= cands[j].cost) {
            continue;
        }
        // Keep the hull convex: drop middle points above the chord.
        while h.len() >= 2 {
            let (a, b) = (cands[h[h.len() - 2]], cands[h[h.len() - 1]]);
            let s_ab = (b.cost - a.cost) / (b.bits - a.bits);
            let s_bc = (c.cost - b.cost) / (c.bits - b.bits);
            if s_bc <= s_ab {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// An upgrade of one unit to the next hull point, ordered by its return.
struct Step {
    gain_per_bit: f64,
    unit: usize,
}

impl PartialEq for Step {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Step {}
impl PartialOrd for Step {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Step {
    /// Higher return first; ties to the lower unit index.
    fn cmp(&self, o: &Self) -> Ordering {
        self.gain_per_bit
            .total_cmp(&o.gain_per_bit)
            .then(o.unit.cmp(&self.unit))
    }
}

/// Chooses one candidate per unit (`units[u]`: its candidates) with total
/// bits at most `budget_bits`, greedily on each unit's lower convex hull
/// (see the module docs). Returns the chosen candidate index per unit.
/// Errors when a unit has no candidate, a value is not finite, bits are
/// not positive, or the smallest choice already exceeds the budget.
pub fn allocate(units: &[Vec<Candidate>], budget_bits: f64) -> Result<Vec<usize>> {
    for (u, c) in units.iter().enumerate() {
        if c.is_empty() {
            return Err(Error::Invalid(format!(
                "bit allocation: unit {u} has no candidate"
            )));
        }
        if let Some(b) = c
            .iter()
            .find(|c| !(c.bits.is_finite() && c.bits > 0.0 && c.cost.is_finite()))
        {
            return Err(Error::Invalid(format!(
                "bit allocation: unit {u} has a candidate of {} bits and cost {} (bits must be positive, both finite)",
                b.bits, b.cost
            )));
        }
    }
    let hulls: Vec<Vec<usize>> = units.iter().map(|c| hull(c)).collect();
    let mut at = vec![0usize; units.len()];
    let mut total: f64 = hulls.iter().zip(units).map(|(h, c)| c[h[0]].bits).sum();
    if total > budget_bits {
        return Err(Error::Invalid(format!(
            "bit allocation: the smallest candidates take {total} bits, above the budget of {budget_bits}"
        )));
    }
    let step = |u: usize, k: usize| -> Option<Step> {
        let h = &hulls[u];
        let (a, b) = (units[u][h[k]], units[u][*h.get(k + 1)?]);
        Some(Step {
            gain_per_bit: (a.cost - b.cost) / (b.bits - a.bits),
            unit: u,
        })
    };
    let mut heap: BinaryHeap<Step> = (0..units.len()).filter_map(|u| step(u, 0)).collect();
    while let Some(s) = heap.pop() {
        let u = s.unit;
        let h = &hulls[u];
        let add = units[u][h[at[u] + 1]].bits - units[u][h[at[u]]].bits;
        if total + add > budget_bits {
            // Does not fit; this unit's later upgrades are larger still.
            continue;
        }
        total += add;
        at[u] += 1;
        if let Some(n) = step(u, at[u]) {
            heap.push(n);
        }
    }
    Ok(at.iter().zip(&hulls).map(|(&k, h)| h[k]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(bits: f64, cost: f64) -> Candidate {
        Candidate { bits, cost }
    }

    /// Four formats of a unit of `n` weights whose error scales with `s`.
    fn unit(n: f64, s: f64) -> Vec<Candidate> {
        vec![
            c(2.125 * n, s * 8.0),
            c(3.125 * n, s * 3.0),
            c(4.125 * n, s * 1.0),
            c(8.125 * n, s * 0.01),
        ]
    }

    #[test]
    fn meets_the_budget_and_favours_sensitive_units() {
        let sens = [0.1, 5.0, 1.0, 0.0, 20.0, 0.5, 2.0, 1.0];
        let units: Vec<_> = sens.iter().map(|&s| unit(1000.0, s)).collect();
        let n = 8000.0;
        for bpw in [2.125, 2.5, 3.0, 3.5, 4.125, 5.0, 8.125, 9.0] {
            let pick = allocate(&units, bpw * n).unwrap();
            let bits: f64 = pick.iter().zip(&units).map(|(&k, u)| u[k].bits).sum();
            assert!(bits <= bpw * n + 1e-9, "bpw {bpw}: {bits} bits");
            // Never more than one upgrade short: at least the budget less
            // the largest step (4 bits × 1000 weights) is used.
            assert!(
                bits >= (bpw * n - 4000.0).min(8.125 * n - 6.0 * 1000.0),
                "bpw {bpw}: {bits}"
            );
            // More sensitive units never get fewer bits.
            for a in 0..sens.len() {
                for b in 0..sens.len() {
                    if sens[a] > sens[b] {
                        assert!(
                            units[a][pick[a]].bits >= units[b][pick[b]].bits,
                            "bpw {bpw}: unit {a} ({}) has fewer bits than {b} ({})",
                            sens[a],
                            sens[b]
                        );
                    }
                }
            }
        }
        // Enough for everything: the best of each (the zero-cost unit
        // stays at its smallest: more bits buy it nothing).
        let pick = allocate(&units, 9.0 * n).unwrap();
        assert_eq!(pick, vec![3, 3, 3, 0, 3, 3, 3, 3]);
        // Exactly the smallest.
        assert_eq!(allocate(&units, 2.125 * n).unwrap(), vec![0; 8]);
    }

    #[test]
    fn greedy_equals_exhaustive_on_hull_budgets() {
        // Three units of different sizes: compare with every combination.
        let units = vec![unit(100.0, 3.0), unit(300.0, 1.0), unit(50.0, 7.0)];
        for budget in [
            956.25, 1000.0, 1300.0, 1600.0, 1900.0, 2500.0, 3000.0, 3700.0,
        ] {
            let pick = allocate(&units, budget).unwrap();
            let cost = |p: &[usize]| -> f64 { p.iter().zip(&units).map(|(&k, u)| u[k].cost).sum() };
            let mut best = f64::INFINITY;
            for a in 0..4 {
                for b in 0..4 {
                    for d in 0..4 {
                        let p = [a, b, d];
                        let bits: f64 = p.iter().zip(&units).map(|(&k, u)| u[k].bits).sum();
                        if bits <= budget {
                            best = best.min(cost(&p));
                        }
                    }
                }
            }
            let got = cost(&pick);
            // Greedy on hulls: within the cost of one upgrade of the best.
            assert!(
                got <= best + 7.0 * 8.0 + 1e-9,
                "budget {budget}: {got} vs {best}"
            );
        }
    }

    #[test]
    fn hull_drops_dominated_and_concave_points() {
        let cands = [
            c(1.0, 10.0),
            c(2.0, 9.5),
            c(3.0, 2.0),
            c(4.0, 3.0),
            c(5.0, 1.0),
        ];
        // (2, 9.5) lies above the chord from (1, 10) to (3, 2); (4, 3) is
        // dominated by (3, 2).
        assert_eq!(hull(&cands), vec![0, 2, 4]);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(allocate(&[vec![]], 10.0).is_err());
        assert!(allocate(&[vec![c(0.0, 1.0)]], 10.0).is_err());
        assert!(allocate(&[vec![c(1.0, f64::NAN)]], 10.0).is_err());
        let e = allocate(&[unit(10.0, 1.0)], 10.0).unwrap_err().to_string();
        assert!(e.contains("above the budget"), "{e}");
    }
}
