//! The `--store nats://…` value: comma-separated server URLs. The first names the scheme
//! (`nats://`, or `tls://` to require TLS) and any credentials (`user:password@`); the others
//! may repeat both or be a bare `host:port`, which takes the first URL's scheme and
//! credentials: `nats://u:p@h1:4222,h2:4222` is `nats://u:p@h1:4222,nats://u:p@h2:4222`.
//!
//! Refused, naming the entry (its credentials shown as `***`, never the password): an empty
//! entry, a scheme other than the first URL's (`http://`, `ws://`, or `tls://` after `nats://`),
//! a bare entry with credentials of its own (usually a password with an unencoded `,` split in
//! two), and anything that is not a NATS server address.

/// The schemes the first URL may have.
const SCHEMES: [&str; 2] = ["nats", "tls"];

/// The value with every entry in full form, `scheme://[credentials@]host:port`, joined by
/// commas; or why it is refused, with credentials redacted.
pub fn normalize(text: &str) -> Result<String, String> {
    let entries: Vec<&str> = text.split(',').map(str::trim).collect();
    // First, before any entry is shown: a bare entry with credentials may be the tail of a
    // password that contains a comma, and then the entries before it hold the password's head.
    for (i, entry) in entries.iter().enumerate() {
        if entry.is_empty() {
            return Err(format!(
                "entry {} is empty (two commas in a row, or one at an end)",
                i + 1
            ));
        }
        if !entry.contains("://") && entry.contains('@') {
            return Err(format!(
                "entry {} ({}) has credentials but no scheme: credentials go in the first URL \
                 and the others take them (write a `,` in a password as %2C)",
                i + 1,
                redact(entry)
            ));
        }
    }
    let first = entries[0];
    let Some((scheme, rest)) = first.split_once("://") else {
        return Err(format!(
            "expected `sled` or nats://HOST:PORT[,HOST:PORT…]: entry 1 ({}) has no scheme",
            redact(first)
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !SCHEMES.contains(&scheme.as_str()) {
        return Err(format!(
            "entry 1 ({}): the scheme must be nats:// or tls://, not {scheme}://",
            redact(first)
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let credentials = authority.rfind('@').map(|at| &authority[..=at]).unwrap_or_default();
    let mut full = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let n = i + 1;
        let url = match entry.split_once("://") {
            Some((other, _)) if !other.eq_ignore_ascii_case(&scheme) => {
                return Err(format!(
                    "entry {n} ({}): every entry must be {scheme}:// like the first, or a bare \
                     HOST:PORT",
                    redact(entry)
                ))
            }
            Some(_) => entry.to_string(),
            None => format!("{scheme}://{credentials}{entry}"),
        };
        let addr: async_nats::ServerAddr = url
            .parse()
            // The parser's message never repeats its input.
            .map_err(|e| format!("entry {n} ({}): {e}", redact(entry)))?;
        if addr.host().is_empty() {
            return Err(format!("entry {n} ({}) has no host", redact(entry)));
        }
        full.push(url);
    }
    Ok(full.join(","))
}

/// An entry as it may be shown: everything before its last `@` (after the scheme) is `***`.
pub fn redact(entry: &str) -> String {
    let (scheme, rest) = match entry.find("://") {
        Some(at) => entry.split_at(at + 3),
        None => ("", entry),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => entry.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_values_come_out_in_full_form() {
        let table = [
            ("nats://h1:4222", "nats://h1:4222"),
            ("nats://h1:4222,h2:4222", "nats://h1:4222,nats://h2:4222"),
            ("nats://h1:4222,nats://h2:4222", "nats://h1:4222,nats://h2:4222"),
            (" nats://h1:4222 , h2:4222 ", "nats://h1:4222,nats://h2:4222"),
            ("NATS://h1:4222,nats://h2:4222", "NATS://h1:4222,nats://h2:4222"),
            ("tls://h1:4222,h2:4222", "tls://h1:4222,tls://h2:4222"),
            ("nats://u:p@h1:4222,h2:4222", "nats://u:p@h1:4222,nats://u:p@h2:4222"),
            ("nats://u:p@h1:4222,nats://u:p@h2:4222", "nats://u:p@h1:4222,nats://u:p@h2:4222"),
            ("nats://tok@h1,h2", "nats://tok@h1,nats://tok@h2"),
            ("nats://u:p%2Cq@h1:4222,h2:4222", "nats://u:p%2Cq@h1:4222,nats://u:p%2Cq@h2:4222"),
            ("nats://[::1]:4222,[::1]:4223", "nats://[::1]:4222,nats://[::1]:4223"),
            ("nats://h1,h2,h3", "nats://h1,nats://h2,nats://h3"),
        ];
        for (input, want) in table {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_values_are_refused_naming_the_entry_without_credentials() {
        // (input, what the message must name)
        let table = [
            ("nats://a:1,,b:2", "entry 2 is empty"),
            ("nats://a:1,", "entry 2 is empty"),
            (",nats://a:1", "entry 1 is empty"),
            ("nats://a:1,http://b:2", "entry 2 (http://b:2)"),
            ("nats://u:s3cret@a:1,http://u:s3cret@b:2", "entry 2 (http://***@b:2)"),
            ("nats://a:1,tls://b:2", "entry 2 (tls://b:2)"),
            ("nats://a:1,ws://b:2", "entry 2 (ws://b:2)"),
            ("http://u:s3cret@a:1", "entry 1 (http://***@a:1)"),
            ("h1:4222", "entry 1 (h1:4222) has no scheme"),
            ("nats://u:s3cret@a:1,b:notaport", "entry 2 (b:notaport)"),
            ("nats://u:s3cret@a:x", "entry 1 (nats://***@a:x)"),
            ("nats://a:1,b:2:3", "entry 2 (b:2:3)"),
            ("nats://", "entry 1 (nats://)"),
            ("nats://u:s3cret@", "entry 1 (nats://***@)"),
            // A password with an unencoded comma: neither half may be shown.
            ("nats://u:s3c,ret@a:1", "entry 2 (***@a:1) has credentials but no scheme"),
            ("nats://u:s3c,r,et@a:1", "entry 3 (***@a:1) has credentials but no scheme"),
            ("nats://u:s3cret@a:1,v:s3cret@b:2", "entry 2 (***@b:2)"),
        ];
        for (input, want) in table {
            let err = normalize(input).expect_err(input);
            assert!(err.contains(want), "{input}: {err}");
            for secret in ["s3cret", "s3c", "ret", "r,et"] {
                assert!(!err.contains(secret), "{input}: the password shows in {err}");
            }
        }
    }

    #[test]
    fn redaction_hides_everything_before_the_last_at() {
        assert_eq!(redact("nats://u:p@ss@h:1"), "nats://***@h:1");
        assert_eq!(redact("u:p@h:1"), "***@h:1");
        assert_eq!(redact("nats://h:1"), "nats://h:1");
    }
}
