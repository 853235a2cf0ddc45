//! Resource quantities as Kubernetes writes them: `500m`, `2`, `1.5`, `128Mi`, `1G`, `1e3`.
//!
//! A quantity is held in thousandths of its unit (millicores for CPU, millibytes for
//! memory) so that `0.5` and `500m` compare equal and sums are exact.

use std::fmt;

/// A parsed quantity, in thousandths of the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Quantity {
    millis: i128,
}

/// Largest magnitude accepted (in units): 2^63, beyond any real machine.
const MAX_UNITS: i128 = 1 << 63;

impl Quantity {
    /// A quantity of `millis` thousandths.
    pub fn from_millis(millis: i128) -> Quantity {
        Quantity { millis }
    }

    /// The quantity in thousandths of its unit.
    pub fn millis(self) -> i128 {
        self.millis
    }

    /// The quantity in whole units, rounded up (as Kubernetes does for bytes).
    pub fn units_ceil(self) -> i128 {
        (self.millis + 999).div_euclid(1000)
    }

    /// Parses `s`; the error names what is wrong.
    pub fn parse(s: &str) -> Result<Quantity, String> {
        let bad = |why: &str| format!("quantity {s:?} {why} (examples: \"500m\", \"2\", \"1.5\", \"128Mi\", \"1G\")");
        let t = s.trim();
        if t.is_empty() {
            return Err(bad("is empty"));
        }
        let (neg, body) = match t.as_bytes()[0] {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let num_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
        let (num, suffix) = body.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad("does not start with a number"));
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        // Value as a decimal: digits / 10^scale.
        let digits: String = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return Err(bad("is too large"));
        }
        let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad("is not a number"))? };
        let scale = frac_part.len() as i32;
        // Multiplier as (numerator power of 2, power of 10).
        let (pow2, pow10): (u32, i32) = match suffix {
            "" => (0, 0),
            "n" => (0, -9),
            "u" => (0, -6),
            "m" => (0, -3),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            "Ki" => (10, 0),
            "Mi" => (20, 0),
            "Gi" => (30, 0),
            "Ti" => (40, 0),
            "Pi" => (50, 0),
            "Ei" => (60, 0),
            e if e.starts_with(['e', 'E']) => {
                let exp: i32 = e[1..].parse().map_err(|_| bad("has a malformed exponent"))?;
                if !(-18..=18).contains(&exp) {
                    return Err(bad("has an exponent out of range"));
                }
                (0, exp)
            }
            _ => return Err(bad(&format!("has an unknown suffix {suffix:?}"))),
        };
        // millis = mantissa * 2^pow2 * 10^(pow10 + 3 - scale), rounded up when fractional.
        let exp10 = pow10 + 3 - scale;
        let mut v = mantissa.checked_mul(1i128 << pow2).ok_or_else(|| bad("is too large"))?;
        if exp10 >= 0 {
            v = v.checked_mul(10i128.pow(exp10 as u32)).ok_or_else(|| bad("is too large"))?;
        } else {
            let d = 10i128.checked_pow((-exp10) as u32).ok_or_else(|| bad("is too small"))?;
            v = (v + d - 1) / d;
        }
        if v / 1000 > MAX_UNITS {
            return Err(bad("is too large"));
        }
        Ok(Quantity { millis: if neg { -v } else { v } })
    }
}

impl fmt::Display for Quantity {
    /// Whole units when exact, millis otherwise (`2`, `500m`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis % 1000 == 0 {
            write!(f, "{}", self.millis / 1000)
        } else {
            write!(f, "{}m", self.millis)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_table() {
        let cases: &[(&str, i128)] = &[
            ("0", 0),
            ("1", 1000),
            ("500m", 500),
            ("0.5", 500),
            ("1.5", 1500),
            ("2k", 2_000_000),
            ("128Mi", 128 * 1024 * 1024 * 1000),
            ("1Gi", (1i128 << 30) * 1000),
            ("1G", 1_000_000_000_000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("100n", 1),
            ("+3", 3000),
            ("-1", -1000),
            (".5", 500),
        ];
        for (s, millis) in cases {
            assert_eq!(Quantity::parse(s).map(|q| q.millis()), Ok(*millis), "{s}");
        }
    }

    #[test]
    fn malformed_quantities_name_the_problem() {
        for (s, why) in [
            ("", "empty"),
            ("abc", "number"),
            ("1.2.3", "number"),
            ("12Q", "unknown suffix"),
            ("1e99", "exponent"),
            ("1ee", "exponent"),
            ("99999999999999999999999999999999Ei", "too large"),
            ("m", "number"),
        ] {
            let e = Quantity::parse(s).expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn equal_quantities_in_different_spellings_compare_equal() {
        assert_eq!(Quantity::parse("0.5"), Quantity::parse("500m"));
        assert!(Quantity::parse("1Gi").expect("q") > Quantity::parse("1G").expect("q"));
        assert_eq!(Quantity::parse("1536Mi").expect("q").units_ceil(), 1536 * 1024 * 1024);
        assert_eq!(Quantity::parse("250m").expect("q").to_string(), "250m");
    }
}
