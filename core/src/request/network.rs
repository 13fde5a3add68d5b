//! IP allow and deny lists: CIDRs (IPv4 and IPv6), matched against the downstream address Envoy
//! computed (`source.address`), never a raw `X-Forwarded-For`, which any client can write.
//!
//! A list is compiled once into one hash set per prefix length that occurs in it: a lookup masks
//! the address once per such length (at most 33 for IPv4, 129 for IPv6) and asks the set, so its
//! cost does not grow with the number of CIDRs. An IPv4 address written as IPv6
//! (`::ffff:10.1.2.3`, as a dual-stack listener reports it) is matched as IPv4: a deny list
//! of `10.0.0.0/8` must not be bypassed by the same client on another socket family.

use crate::config::error::{index, ConfigError};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The most CIDRs one list may hold (a bound on memory, and on a mistaken config).
pub const MAX_CIDRS: usize = 100_000;

/// A compiled list of CIDRs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList {
    /// Where the list is in the configuration (`deny_ips`, `routes[2].allow_ips`): the name in
    /// its security events.
    pub name: String,
    v4: Prefixes<u32>,
    v6: Prefixes<u128>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Prefixes<T: std::hash::Hash + Eq> {
    /// The prefix lengths present, longest first (the first match is the most specific).
    lengths: Vec<u8>,
    /// (length, masked network).
    networks: HashSet<(u8, T)>,
}

impl<T: Copy + std::hash::Hash + Eq> Prefixes<T> {
    fn insert(&mut self, length: u8, network: T) {
        if !self.lengths.contains(&length) {
            self.lengths.push(length);
            self.lengths.sort_unstable_by(|a, b| b.cmp(a));
        }
        self.networks.insert((length, network));
    }

    fn longest_match(&self, address: T, mask: impl Fn(T, u8) -> T) -> Option<(u8, T)> {
        self.lengths.iter().find_map(|&length| {
            let network = mask(address, length);
            self.networks
                .contains(&(length, network))
                .then_some((length, network))
        })
    }
}

fn mask_v4(address: u32, length: u8) -> u32 {
    match length {
        0 => 0,
        l => address & (u32::MAX << (32 - u32::from(l.min(32)))),
    }
}

fn mask_v6(address: u128, length: u8) -> u128 {
    match length {
        0 => 0,
        l => address & (u128::MAX << (128 - u32::from(l.min(128)))),
    }
}

/// An address, with IPv4-mapped IPv6 addresses read as the IPv4 address they carry.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl IpList {
    /// Compiles `cidrs` (the list at config path `at`). Every entry is checked; all errors are
    /// returned. `allow` lists may not be empty: an empty allow list admits no one.
    pub fn compile(cidrs: &[String], at: &str, allow: bool) -> Result<IpList, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if allow && cidrs.is_empty() {
            errors.push(ConfigError::new(
                at,
                "an empty allow list admits no one: list at least one CIDR, or remove it",
            ));
        }
        if cidrs.len() > MAX_CIDRS {
            errors.push(ConfigError::new(
                at,
                format!("at most {MAX_CIDRS} CIDRs per list"),
            ));
            return Err(errors);
        }
        let mut list = IpList {
            name: at.to_string(),
            ..IpList::default()
        };
        for (i, cidr) in cidrs.iter().enumerate() {
            match parse_cidr(cidr) {
                Ok((IpAddr::V4(network), length)) => list.v4.insert(length, u32::from(network)),
                Ok((IpAddr::V6(network), length)) => list.v6.insert(length, u128::from(network)),
                Err(reason) => errors.push(ConfigError::new(index(at, i), reason)),
            }
        }
        if errors.is_empty() {
            Ok(list)
        } else {
            Err(errors)
        }
    }

    /// The CIDR of the list that holds `client` (the most specific one), written as configured
    /// would be written canonically; `None` when none does. An address that cannot be read
    /// matches nothing: the caller decides what that means (an allow list refuses it).
    pub fn matching(&self, client: &str) -> Option<String> {
        let address = canonical(client.parse::<IpAddr>().ok()?);
        match address {
            IpAddr::V4(v4) => self
                .v4
                .longest_match(u32::from(v4), mask_v4)
                .map(|(length, network)| format!("{}/{length}", Ipv4Addr::from(network))),
            IpAddr::V6(v6) => self
                .v6
                .longest_match(u128::from(v6), mask_v6)
                .map(|(length, network)| format!("{}/{length}", Ipv6Addr::from(network))),
        }
    }

    /// How many CIDRs the list holds (after duplicates are merged).
    pub fn len(&self) -> usize {
        self.v4.networks.len() + self.v6.networks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32`, `/128`). Host bits set after the
/// prefix are refused (`10.0.0.1/8` is a typo for one of two different lists); an IPv4-mapped
/// IPv6 network (`::ffff:10.0.0.0/104`) becomes the IPv4 network it names.
fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (address, length) = match text.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (text, None),
    };
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 or IPv6 address or CIDR"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let length = match length {
        None => max,
        Some(digits) => {
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!("{text:?}: the prefix length is not a number"));
            }
            let length: u8 = digits
                .parse()
                .map_err(|_| format!("{text:?}: the prefix length is not a number"))?;
            if length > max {
                return Err(format!("{text:?}: the prefix length is at most {max}"));
            }
            length
        }
    };
    let (address, length) = match address {
        IpAddr::V6(v6) if length >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), length - 96),
            None => (address, length),
        },
        _ => (address, length),
    };
    let host_bits_set = match address {
        IpAddr::V4(v4) => mask_v4(u32::from(v4), length) != u32::from(v4),
        IpAddr::V6(v6) => mask_v6(u128::from(v6), length) != u128::from(v6),
    };
    if host_bits_set {
        let network = match address {
            IpAddr::V4(v4) => Ipv4Addr::from(mask_v4(u32::from(v4), length)).to_string(),
            IpAddr::V6(v6) => Ipv6Addr::from(mask_v6(u128::from(v6), length)).to_string(),
        };
        return Err(format!(
            "{text:?} has bits set after the prefix: the network is {network}/{length}"
        ));
    }
    Ok((address, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(cidrs: &[&str]) -> IpList {
        let cidrs: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
        IpList::compile(&cidrs, "deny_ips", false).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn ipv4_and_ipv6_networks_match_their_addresses_only() {
        let l = list(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "0.0.0.0/32"]);
        assert_eq!(l.matching("10.200.3.4").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(l.matching("11.0.0.1"), None);
        assert_eq!(l.matching("192.168.1.7").as_deref(), Some("192.168.1.7/32"));
        assert_eq!(l.matching("192.168.1.8"), None);
        assert_eq!(
            l.matching("2001:db8:ffff::1").as_deref(),
            Some("2001:db8::/32")
        );
        assert_eq!(l.matching("2001:db9::1"), None);
        assert_eq!(l.len(), 4);
    }

    #[test]
    fn the_most_specific_network_is_reported() {
        let l = list(&["10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0"]);
        assert_eq!(l.matching("10.1.2.3").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(l.matching("10.2.2.3").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(l.matching("8.8.8.8").as_deref(), Some("0.0.0.0/0"));
        // An IPv4 catch-all says nothing of IPv6.
        assert_eq!(l.matching("2001:db8::1"), None);
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_their_ipv4_address() {
        let l = list(&["10.0.0.0/8"]);
        assert_eq!(l.matching("::ffff:10.1.2.3").as_deref(), Some("10.0.0.0/8"));
        let mapped = list(&["::ffff:192.168.0.0/112"]);
        assert_eq!(
            mapped.matching("192.168.3.4").as_deref(),
            Some("192.168.0.0/16")
        );
    }

    #[test]
    fn unreadable_addresses_match_nothing() {
        let l = list(&["0.0.0.0/0", "::/0"]);
        for bad in [
            "",
            "10.0.0.1:80",
            "[::1]",
            "10.0.0",
            "localhost",
            "10.0.0.1 ",
        ] {
            assert_eq!(l.matching(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_entries_are_refused_with_their_path() {
        let cidrs: Vec<String> = [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "x",
            "1.2.3.4/+8",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect();
        let errors = IpList::compile(&cidrs, "routes[1].allow_ips", true).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 6, "{text:?}");
        assert!(text[0].starts_with("routes[1].allow_ips[0]:"), "{text:?}");
        assert!(text[0].contains("the network is 10.0.0.0/8"), "{text:?}");
        assert!(text[1].contains("at most 32"), "{text:?}");
        assert!(text[2].contains("at most 128"), "{text:?}");
        let empty = IpList::compile(&[], "routes[0].allow_ips", true).unwrap_err();
        assert!(empty[0].to_string().contains("admits no one"));
        assert!(IpList::compile(&[], "deny_ips", false).is_ok());
    }

    #[test]
    fn lookups_do_not_depend_on_the_list_size() {
        // 10,000 /24s and 10,000 /48s: a lookup still probes one set per prefix length.
        let cidrs: Vec<String> = (0..10_000u32)
            .map(|i| format!("{}.{}.{}.0/24", 10 + i / 65_536, (i / 256) % 256, i % 256))
            .chain((0..10_000u32).map(|i| format!("2001:db8:{i:x}::/48")))
            .collect();
        let l = IpList::compile(&cidrs, "deny_ips", false).unwrap();
        assert_eq!(l.len(), 20_000);
        assert_eq!(l.v4.lengths, vec![24]);
        assert_eq!(l.matching("10.39.15.200").as_deref(), Some("10.39.15.0/24"));
        assert_eq!(
            l.matching("2001:db8:270f:1::9").as_deref(),
            Some("2001:db8:270f::/48")
        );
        assert_eq!(l.matching("2001:db8:2710::1"), None);
    }
}
