//! IPv4 address ranges written as CIDRs (`10.244.0.0/16`): parsing with a clear error, and
//! cutting a range into equal blocks (a node's podCIDR out of the cluster's range, an
//! address out of a load-balancer pool).

use std::net::Ipv4Addr;

/// An IPv4 range: its first address (host bits cleared) and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The first address.
    pub base: Ipv4Addr,
    /// The prefix length (0..=32).
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.96.0.7/12` (host bits are cleared) with a prefix in `min..=max`.
    pub fn parse_within(s: &str, min: u8, max: u8) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR like 10.96.0.0/12"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} in {s:?} is not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{p:?} in {s:?} is not a prefix length"))?;
        if !(min..=max).contains(&prefix) {
            return Err(format!("prefix length /{prefix} in {s:?} must be between /{min} and /{max}"));
        }
        Ok(Cidr { base: Ipv4Addr::from(u32::from(addr) & mask(prefix)), prefix })
    }

    /// How many blocks of prefix `len` the range holds (0 if `len` is shorter).
    pub fn blocks(&self, len: u8) -> u64 {
        if len < self.prefix || len > 32 {
            return 0;
        }
        1u64 << (len - self.prefix)
    }

    /// Block `i` of prefix `len` (i < blocks(len)).
    pub fn block(&self, len: u8, i: u64) -> Cidr {
        let step = 1u64 << (32 - len);
        Cidr { base: Ipv4Addr::from((u64::from(u32::from(self.base)) + i * step) as u32), prefix: len }
    }

    /// Whether `other` lies wholly inside this range.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && u32::from(other.base) & mask(self.prefix) == u32::from(self.base)
    }

    /// Whether `ip` lies inside this range.
    pub fn contains_ip(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.base)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// Parses `10.96.0.0/12` with a prefix between /8 and /30: (first address, prefix).
pub fn parse(s: &str) -> Result<(Ipv4Addr, u8), String> {
    Cidr::parse_within(s, 8, 30).map(|c| (c.base, c.prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_masks_the_host_bits_and_names_the_problem() {
        assert_eq!(parse("10.96.0.7/12"), Ok((Ipv4Addr::new(10, 96, 0, 0), 12)));
        assert!(parse("10.96.0.0").expect_err("no prefix").contains("CIDR"));
        assert!(parse("10.96.0.0/31").expect_err("too small").contains("/31"));
        assert!(parse("x/12").expect_err("bad addr").contains("IPv4"));
    }

    #[test]
    fn a_range_cuts_into_blocks_that_it_contains() {
        let c = Cidr::parse_within("10.244.0.0/16", 8, 30).expect("cidr");
        assert_eq!(c.blocks(24), 256);
        assert_eq!(c.blocks(8), 0);
        assert_eq!(c.block(24, 0).to_string(), "10.244.0.0/24");
        assert_eq!(c.block(24, 255).to_string(), "10.244.255.0/24");
        assert!(c.contains(&c.block(24, 255)));
        assert!(!c.contains(&Cidr::parse_within("10.245.0.0/24", 8, 30).expect("cidr")));
        assert!(c.contains_ip(Ipv4Addr::new(10, 244, 3, 4)));
        assert!(!c.contains_ip(Ipv4Addr::new(10, 243, 3, 4)));
    }
}
