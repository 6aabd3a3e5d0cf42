//! Figures for the benchmarks.

/// The median of the samples that are numbers (NaN marks a failed sample); NaN when
/// there are none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_skips_failed_samples() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![f64::NAN, 5.0, 1.0, 9.0]), 5.0);
        assert!(median(vec![f64::NAN]).is_nan());
    }
}
