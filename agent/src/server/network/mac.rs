//! Ethernet hardware addresses as the host side writes them: "02:00:0a:c8:03:04".

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Six bytes of two hex digits each, separated by ':' (either case); `None` otherwise.
    pub fn parse(s: &str) -> Option<Mac> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut bytes {
            let part = parts.next()?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            *b = u8::from_str_radix(part, 16).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Mac(bytes))
    }

    /// The group bit: a multicast (or broadcast) address, never an interface's own.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_six_hex_bytes() {
        let mac = Mac::parse("02:00:0a:c8:03:04").unwrap();
        assert_eq!(mac, Mac([0x02, 0x00, 0x0a, 0xc8, 0x03, 0x04]));
        assert_eq!(mac.to_string(), "02:00:0a:c8:03:04");
        assert_eq!(
            Mac::parse("52:54:00:AB:cD:eF").unwrap().to_string(),
            "52:54:00:ab:cd:ef"
        );
        assert!(!mac.is_multicast());
        assert!(!mac.is_zero());
    }

    #[test]
    fn rejects_malformed_macs() {
        for bad in [
            "",
            "02:00:0a:c8:03",
            "02:00:0a:c8:03:04:05",
            "02:00:0a:c8:03:4",
            "02:00:0a:c8:03:004",
            "02-00-0a-c8-03-04",
            "02:00:0a:c8:03:0g",
            "02:00:0a:c8:03:+4",
            "02:00:0a:c8:03:04:",
            " 02:00:0a:c8:03:04",
            "0200.0ac8.0304",
        ] {
            assert_eq!(Mac::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn multicast_and_zero() {
        assert!(Mac::parse("01:00:5e:00:00:01").unwrap().is_multicast());
        assert!(Mac::parse("ff:ff:ff:ff:ff:ff").unwrap().is_multicast());
        assert!(Mac::parse("00:00:00:00:00:00").unwrap().is_zero());
    }
}
