//! The question a `dns` probe asks (keepalived's DNS_CHECK): a name and a record type,
//! and what makes a name one a DNS message can carry.

use std::fmt;

/// The name asked unless `name` is set: the root, as keepalived's DNS_CHECK does.
pub const DEFAULT_NAME: &str = ".";
/// The type asked unless `query_type` is set: SOA, as keepalived's DNS_CHECK does (a
/// server authoritative for the name answers it without recursion).
pub const DEFAULT_TYPE: QueryType = QueryType::Soa;
/// Longest label, in bytes (RFC 1035 2.3.4).
pub const MAX_LABEL: usize = 63;
/// Longest name in its wire form (length bytes, labels, the root's 0), in bytes
/// (RFC 1035 2.3.4).
pub const MAX_NAME: usize = 255;

/// The record types a `dns` probe may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueryType {
    A,
    Ns,
    Cname,
    Soa,
    Mx,
    Txt,
    Aaaa,
}

impl QueryType {
    /// Returns: the type's QTYPE number (RFC 1035 3.2.2, RFC 3596 for AAAA).
    pub fn code(self) -> u16 {
        match self {
            QueryType::A => 1,
            QueryType::Ns => 2,
            QueryType::Cname => 5,
            QueryType::Soa => 6,
            QueryType::Mx => 15,
            QueryType::Txt => 16,
            QueryType::Aaaa => 28,
        }
    }
}

impl fmt::Display for QueryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryType::A => "A",
            QueryType::Ns => "NS",
            QueryType::Cname => "CNAME",
            QueryType::Soa => "SOA",
            QueryType::Mx => "MX",
            QueryType::Txt => "TXT",
            QueryType::Aaaa => "AAAA",
        })
    }
}

/// What a `dns` probe asks, class IN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsQuestion {
    /// The name, dotted, as validated by [`labels`] (a final dot optional; `.` is the
    /// root).
    pub name: String,
    pub qtype: QueryType,
}

impl Default for DnsQuestion {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_string(),
            qtype: DEFAULT_TYPE,
        }
    }
}

/// Splits `name` into its labels: `.` (or an empty name) is the root, a final dot is
/// optional, and a label is 1 to 63 printable ASCII bytes other than a space or a dot
/// (no escapes: a probe asks for host names, not arbitrary binary labels).
/// Returns: the labels, or what is wrong with the name.
pub fn labels(name: &str) -> Result<Vec<&str>, String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Ok(Vec::new());
    }
    let labels: Vec<&str> = bare.split('.').collect();
    // Wire form: one length byte per label, the labels, the root's 0.
    let wire = labels.iter().map(|l| 1 + l.len()).sum::<usize>() + 1;
    for l in &labels {
        if l.is_empty() {
            return Err(format!("`{name}` has an empty label (two dots in a row)"));
        }
        if l.len() > MAX_LABEL {
            return Err(format!(
                "`{name}` has a label of {} bytes; at most {MAX_LABEL}",
                l.len()
            ));
        }
        if !l.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "`{name}` holds a space, a control or a non-ASCII character"
            ));
        }
    }
    if wire > MAX_NAME {
        return Err(format!(
            "`{name}` is {wire} bytes long on the wire; at most {MAX_NAME}"
        ));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_labels_within_the_limits() {
        assert_eq!(labels("."), Ok(vec![]));
        assert_eq!(labels("example.test"), Ok(vec!["example", "test"]));
        assert_eq!(labels("example.test."), Ok(vec!["example", "test"]));
        assert!(labels("a..b").unwrap_err().contains("empty label"));
        let long = "a".repeat(64);
        assert!(labels(&long).unwrap_err().contains("64 bytes"));
        assert!(labels(&"a".repeat(63)).is_ok());
        // 4 labels of 63 bytes: 4 * 64 + 1 = 257 bytes.
        let big = [&*"b".repeat(63); 4].join(".");
        assert!(labels(&big).unwrap_err().contains("257 bytes"));
        assert!(labels("a b.test").is_err());
        assert!(labels("é.test").is_err());
    }
}
