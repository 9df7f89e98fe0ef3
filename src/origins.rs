//! `CORS_ALLOWED_ORIGINS`: the origins whose web pages may call the API, parsed once when the
//! settings are read (the API's CORS layer, `api::cors`, applies them).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, de};

/// The origins whose pages may call the API (`scheme://host[:port]`, as browsers send them in
/// `Origin`). Empty: no cross-origin access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

/// An entry of `CORS_ALLOWED_ORIGINS` that is not an origin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{entry}` is not an origin like https://app.example.com: {reason}")]
pub struct BadOrigin {
    entry: String,
    reason: &'static str,
}

impl AllowedOrigins {
    /// Parses each entry into the form browsers send (lower-case host, no default port): so
    /// `https://App.example.com:443/` matches what a page at that address sends.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, BadOrigin> {
        let mut origins = Vec::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            let origin = parse_origin(entry).map_err(|reason| BadOrigin {
                entry: entry.to_owned(),
                reason,
            })?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(AllowedOrigins(origins))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

fn parse_origin(entry: &str) -> Result<String, &'static str> {
    if entry == "*" || entry == "null" {
        return Err("list each origin allowed, one by one");
    }
    let url = url::Url::parse(entry).map_err(|_| "it does not parse as scheme://host[:port]")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the scheme must be http or https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("an origin has no user or password");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("an origin has no path, query or fragment");
    }
    Ok(url.origin().ascii_serialization())
}

/// A comma-separated list: `https://app.example.com,http://127.0.0.1:3000`.
impl FromStr for AllowedOrigins {
    type Err = BadOrigin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AllowedOrigins::parse(s.split(','))
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// From the environment's comma-separated string, or a config file's string or array.
impl<'de> Deserialize<'de> for AllowedOrigins {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = AllowedOrigins;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a comma-separated list of origins, or an array of them")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<AllowedOrigins, E> {
                v.parse().map_err(named)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AllowedOrigins, A::Error> {
                let mut entries: Vec<String> = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                AllowedOrigins::parse(entries.iter().map(String::as_str)).map_err(named)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The settings' error names the setting: flattened settings lose figment's key in errors.
fn named<E: de::Error>(e: BadOrigin) -> E {
    E::custom(format!("CORS_ALLOWED_ORIGINS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_into_the_form_browsers_send() {
        let o: AllowedOrigins =
            " http://127.0.0.1:3000, https://App.Example.com:443/ ,,http://127.0.0.1:3000"
                .parse()
                .unwrap();
        assert_eq!(
            o.iter().collect::<Vec<_>>(),
            ["http://127.0.0.1:3000", "https://app.example.com"]
        );
        assert!("".parse::<AllowedOrigins>().unwrap().is_empty());
    }

    #[test]
    fn what_is_not_an_origin_is_refused_with_the_entry() {
        for bad in [
            "*",
            "null",
            "127.0.0.1:3000",
            "app.example.com",
            "ftp://files.example.com",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "https://user@app.example.com",
            "http://",
        ] {
            let err = format!("https://ok.example.com,{bad}")
                .parse::<AllowedOrigins>()
                .expect_err(bad);
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }
}
