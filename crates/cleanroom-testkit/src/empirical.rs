//! Empirical privacy checks: exact Clopper–Pearson intervals for binomial proportions and the
//! lower confidence bound on ε they give from an attacker's true- and false-positive counts
//! (as in DP-Sniper and the "auditing DP" literature). Used by the attack tests; no IO.

fn ln_factorials(n: u64) -> Vec<f64> {
    let mut v = Vec::with_capacity(n as usize + 1);
    v.push(0.0);
    let mut acc = 0.0;
    for i in 1..=n {
        acc += (i as f64).ln();
        v.push(acc);
    }
    v
}

/// P(X ≤ k) for X ~ Binomial(n, p), summed in log space.
fn cdf(k: u64, n: u64, p: f64, lf: &[f64]) -> f64 {
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return if k >= n { 1.0 } else { 0.0 };
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let terms: Vec<f64> = (0..=k)
        .map(|i| {
            lf[n as usize] - lf[i as usize] - lf[(n - i) as usize]
                + i as f64 * lp
                + (n - i) as f64 * lq
        })
        .collect();
    let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln())
        .exp()
        .min(1.0)
}

fn bisect(mut lo: f64, mut hi: f64, f: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if f(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    (lo + hi) / 2.0
}

/// Two-sided Clopper–Pearson interval with coverage 1 − alpha for k successes in n trials.
pub fn clopper_pearson(k: u64, n: u64, alpha: f64) -> (f64, f64) {
    let lf = ln_factorials(n);
    let lo = if k == 0 {
        0.0
    } else {
        // smallest p with P(X ≥ k | p) ≥ alpha/2
        bisect(0.0, 1.0, |p| 1.0 - cdf(k - 1, n, p, &lf) >= alpha / 2.0)
    };
    let hi = if k == n {
        1.0
    } else {
        // largest p with P(X ≤ k | p) ≥ alpha/2
        bisect(0.0, 1.0, |p| cdf(k, n, p, &lf) < alpha / 2.0)
    };
    (lo, hi)
}

/// A lower confidence bound on ε from an attacker's event S: with TPR = P(S | D₁) and
/// FPR = P(S | D₀), ε ≥ ln(TPR / FPR) for any ε-DP mechanism; using the lower end of the
/// TPR interval and the upper end of the FPR interval makes the bound hold with confidence.
pub fn epsilon_lower_bound(hits_d1: u64, hits_d0: u64, n: u64, alpha: f64) -> f64 {
    let (tpr_lo, _) = clopper_pearson(hits_d1, n, alpha);
    let (_, fpr_hi) = clopper_pearson(hits_d0, n, alpha);
    (tpr_lo / fpr_hi).ln()
}

/// The same bound for an (ε, δ) mechanism: TPR ≤ e^ε·FPR + δ, so ε ≥ ln((TPR − δ) / FPR).
/// Returns negative infinity when the lower end of the TPR interval is at most δ.
pub fn epsilon_lower_bound_approx(
    hits_d1: u64,
    hits_d0: u64,
    n: u64,
    alpha: f64,
    delta: f64,
) -> f64 {
    let (tpr_lo, _) = clopper_pearson(hits_d1, n, alpha);
    let (_, fpr_hi) = clopper_pearson(hits_d0, n, alpha);
    if tpr_lo <= delta {
        return f64::NEG_INFINITY;
    }
    ((tpr_lo - delta) / fpr_hi).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clopper_pearson_matches_known_values() {
        // R: binom.test(50, 100)$conf.int = 0.3983211 0.6016789
        let (lo, hi) = clopper_pearson(50, 100, 0.05);
        assert!(
            (lo - 0.3983211).abs() < 1e-6 && (hi - 0.6016789).abs() < 1e-6,
            "{lo} {hi}"
        );
        let (lo, hi) = clopper_pearson(0, 10, 0.05);
        assert!(lo == 0.0 && (hi - 0.3084971).abs() < 1e-6, "{hi}");
    }
}
