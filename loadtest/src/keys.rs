//! Key distributions: one hot key, uniform, or Zipf over `n` keys.

use clap::ValueEnum;
use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    /// Every subscriber and every publish uses key 0.
    Hot,
    Uniform,
    Zipf,
}

pub struct Picker {
    dist: Dist,
    n: usize,
    /// Cumulative weights for Zipf.
    cdf: Vec<f64>,
}

impl Picker {
    pub fn new(dist: Dist, n: usize, exponent: f64) -> Self {
        let n = n.max(1);
        let cdf = if dist == Dist::Zipf {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=n)
                .map(|k| {
                    acc += 1.0 / (k as f64).powf(exponent);
                    acc
                })
                .collect();
            for c in &mut cdf {
                *c /= acc;
            }
            cdf
        } else {
            Vec::new()
        };
        Self { dist, n, cdf }
    }

    pub fn pick<R: Rng>(&self, rng: &mut R) -> usize {
        match self.dist {
            Dist::Hot => 0,
            Dist::Uniform => rng.random_range(0..self.n),
            Dist::Zipf => {
                let u: f64 = rng.random();
                self.cdf.partition_point(|&c| c < u).min(self.n - 1)
            }
        }
    }
}

pub fn key_name(i: usize) -> String {
    format!("k{i}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipf_favours_low_ranks() {
        let p = Picker::new(Dist::Zipf, 1000, 1.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[p.pick(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[9] * 5);
        assert!(counts[0] > 10_000);
        assert_eq!(Picker::new(Dist::Hot, 10, 1.0).pick(&mut rng), 0);
    }
}
