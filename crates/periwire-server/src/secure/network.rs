//! Networks written as CIDR (`192.0.2.0/24`, `fd00::/8`, or one address), for the config's
//! `plain_allow`.

use std::fmt;
use std::net::IpAddr;

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` lies in the network. An IPv4 peer seen on a dual-stack socket
    /// (`::ffff:a.b.c.d`) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` bits of `a` and `b` (left-aligned) agree.
fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    a & mask == b & mask
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?} is not a network ({why}); write e.g. 192.0.2.0/24");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| bad("bad prefix length"))?,
        };
        let network = Network { addr, prefix };
        // Host bits set (192.0.2.7/24) is most likely a typo for another network.
        let masked = match addr {
            IpAddr::V4(a) => host_bits_zero_v4(u32::from(a), prefix),
            IpAddr::V6(a) => host_bits_zero_v6(u128::from(a), prefix),
        };
        if !masked {
            return Err(bad("address has bits set beyond the prefix"));
        }
        Ok(network)
    }
}

fn host_bits_zero_v4(a: u32, prefix: u8) -> bool {
    u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0) & a == 0
}

fn host_bits_zero_v6(a: u128, prefix: u8) -> bool {
    u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0) & a == 0
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_inside_and_outside() {
        let n = net("192.0.2.0/24");
        assert!(n.contains(ip("192.0.2.0")));
        assert!(n.contains(ip("192.0.2.255")));
        assert!(!n.contains(ip("192.0.3.1")));
        assert!(
            n.contains(ip("::ffff:192.0.2.9")),
            "an IPv4 peer on a dual-stack socket"
        );
        assert!(!n.contains(ip("2001:db8::1")));
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.5")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")));
        let one = net("198.51.100.7");
        assert!(one.contains(ip("198.51.100.7")) && !one.contains(ip("198.51.100.6")));
        let v6 = net("2001:db8:1::/48");
        assert!(v6.contains(ip("2001:db8:1:ffff::1")));
        assert!(!v6.contains(ip("2001:db8:2::1")));
        assert!(net("::/0").contains(ip("fe80::1")));
    }

    #[test]
    fn malformed_networks_are_refused() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.1/24",
            "fd00::1/8",
            "host/24",
            "::/129",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?}");
        }
        assert_eq!(net("192.0.2.0/24").to_string(), "192.0.2.0/24");
    }
}
