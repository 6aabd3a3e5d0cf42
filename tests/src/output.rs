//! Parser for the guests' line protocol on the serial console:
//! `ok <check> [detail]`, `fail <check> <detail>`, `info <key> <value...>`, `done`.
//! Other lines (and a leading `!` from test=bench) are kept only in `raw`.

/// One `ok`/`fail`/`info` line split into its key and the rest of the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
}

/// Everything a guest printed, grouped by line kind.
#[derive(Debug, Default, Clone)]
pub struct GuestOutput {
    pub raw: String,
    pub ok: Vec<Entry>,
    pub fail: Vec<Entry>,
    pub info: Vec<Entry>,
    pub done: bool,
}

impl GuestOutput {
    pub fn parse(text: &str) -> Self {
        let mut out = GuestOutput {
            raw: text.to_owned(),
            ..Self::default()
        };
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line == "done" {
                out.done = true;
                continue;
            }
            let Some((kind, rest)) = line.split_once(' ') else {
                continue;
            };
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            let entry = Entry {
                key: key.to_owned(),
                value: value.to_owned(),
            };
            match kind {
                "ok" => out.ok.push(entry),
                "fail" => out.fail.push(entry),
                "info" => out.info.push(entry),
                _ => {}
            }
        }
        out
    }

    /// The value of the first `info <key>` line.
    pub fn info(&self, key: &str) -> Option<&str> {
        self.info
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// The values of every `info <key>` line, in order.
    pub fn info_all(&self, key: &str) -> Vec<&str> {
        self.info
            .iter()
            .filter(|e| e.key == key)
            .map(|e| e.value.as_str())
            .collect()
    }

    /// The value of `info <key>`, panicking with the whole output if it is missing.
    pub fn expect_info(&self, key: &str) -> &str {
        self.info(key)
            .unwrap_or_else(|| panic!("guest printed no `info {key}` line; output:\n{}", self.raw))
    }

    /// `info <key>` parsed as a number (`0x` hex or decimal).
    pub fn info_num(&self, key: &str) -> u64 {
        let v = self.expect_info(key);
        parse_num(v).unwrap_or_else(|| panic!("`info {key} {v}` is not a number"))
    }

    pub fn has_ok(&self, key: &str) -> bool {
        self.ok.iter().any(|e| e.key == key)
    }

    /// Panics listing every `fail` line, if there is any.
    pub fn assert_no_fail(&self) {
        assert!(
            self.fail.is_empty(),
            "guest reported failures: {:?}\noutput:\n{}",
            self.fail,
            self.raw
        );
    }
}

/// Parses `0x`-prefixed hex or decimal.
pub fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses a whitespace-separated list of numbers, e.g. an `info e820` value.
pub fn parse_nums(s: &str) -> Option<Vec<u64>> {
    s.split_whitespace().map(parse_num).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "info cr0 0x80050033\r\n\
        ok pvh magic\n\
        info cmdline console=ttyS0 reboot=k test=boot\n\
        info e820 0x0 0x9fc00 1\n\
        info e820 0x9fc00 0x400 2\n\
        fail blk0 timeout read\n\
        Kernel panic - not syncing: x\n\
        info empty\n\
        done\n";

    #[test]
    fn splits_lines_by_kind() {
        let g = GuestOutput::parse(SAMPLE);
        assert!(g.done);
        assert!(g.has_ok("pvh"));
        assert_eq!(g.ok[0].value, "magic");
        assert_eq!(g.fail.len(), 1);
        assert_eq!(g.fail[0].key, "blk0");
        assert_eq!(g.fail[0].value, "timeout read");
        assert_eq!(g.info("empty"), Some(""));
        assert_eq!(g.raw, SAMPLE);
    }

    #[test]
    fn keeps_the_whole_rest_of_the_line_as_value() {
        let g = GuestOutput::parse(SAMPLE);
        assert_eq!(g.info("cmdline"), Some("console=ttyS0 reboot=k test=boot"));
    }

    #[test]
    fn numbers_parse_as_hex_or_decimal() {
        let g = GuestOutput::parse(SAMPLE);
        assert_eq!(g.info_num("cr0"), 0x8005_0033);
        assert_eq!(parse_num("42"), Some(42));
        assert_eq!(parse_num("0x0000000000100000"), Some(0x10_0000));
        assert_eq!(parse_num("0xzz"), None);
        let e820: Vec<_> = g.info_all("e820").into_iter().map(parse_nums).collect();
        assert_eq!(
            e820,
            vec![Some(vec![0, 0x9fc00, 1]), Some(vec![0x9fc00, 0x400, 2])]
        );
    }

    #[test]
    fn incomplete_output_is_not_done() {
        let g = GuestOutput::parse("info ready\n!");
        assert!(!g.done);
        assert_eq!(g.info("ready"), Some(""));
        assert_eq!(g.info("missing"), None);
    }

    #[test]
    #[should_panic(expected = "guest reported failures")]
    fn assert_no_fail_panics_on_fail_lines() {
        GuestOutput::parse(SAMPLE).assert_no_fail();
    }
}
