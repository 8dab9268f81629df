//! Parameter lists, zero-copy: the raw span of `;name=value` (URI and header
//! parameters) or `name=value, name=value` (auth-params), iterated on demand.
//! The typed decoder that produced a list has already validated its grammar;
//! iteration only splits and trims.

use crate::grammar::{find_outside_quotes, is_lws, sws};
use crate::limits::MAX_PARAMS;

/// One parameter: a name and an optional value (quotes kept, see [`Param::unquoted`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    /// The parameter name.
    pub name: &'a str,
    /// The value, if there is an `=`.
    pub value: Option<&'a str>,
}

impl<'a> Param<'a> {
    /// The value without surrounding double quotes (quoted-pairs stay escaped).
    pub fn unquoted(&self) -> Option<&'a str> {
        self.value.map(unquote)
    }
}

/// Strips one pair of surrounding double quotes, if present.
pub fn unquote(value: &str) -> &str {
    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value)
}

/// A validated parameter list borrowed from a message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a str,
    separator: u8,
}

impl<'a> Params<'a> {
    /// `;`-separated parameters (URI or header parameters); `raw` starts at the first `;`.
    pub(crate) const fn semicolon(raw: &'a str) -> Self {
        Params { raw, separator: b';' }
    }

    /// `,`-separated parameters (auth-params).
    pub(crate) const fn comma(raw: &'a str) -> Self {
        Params { raw, separator: b',' }
    }

    /// The raw text, as written.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The parameters in order.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter { rest: self.raw, separator: self.separator, count: 0 }
    }

    /// The first parameter with this name (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<Param<'a>> {
        self.iter().find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The value of the first parameter with this name, unquoted; `None` if absent or valueless.
    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|p| p.unquoted())
    }

    /// Whether a parameter with this name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl<'a> IntoIterator for Params<'a> {
    type Item = Param<'a>;
    type IntoIter = ParamIter<'a>;
    fn into_iter(self) -> ParamIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`Params`] list.
#[derive(Clone, Debug)]
pub struct ParamIter<'a> {
    rest: &'a str,
    separator: u8,
    count: usize,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        loop {
            if self.count >= MAX_PARAMS {
                return None;
            }
            let text = sws(self.rest);
            if text.is_empty() {
                return None;
            }
            let bytes = text.as_bytes();
            // The end of this parameter: the next separator outside quotes (past its own).
            let end = find_outside_quotes(bytes, self.separator, 1);
            let item = text[..end].strip_prefix(self.separator as char).unwrap_or(&text[..end]);
            self.rest = &text[end..];
            let item = item.trim_matches(|c: char| c.is_ascii() && is_lws(c as u8));
            if item.is_empty() {
                if end == bytes.len() {
                    return None;
                }
                continue;
            }
            self.count += 1;
            let trim = |s: &'a str| s.trim_matches(|c: char| c.is_ascii() && is_lws(c as u8));
            return Some(match item.split_once('=') {
                Some((name, value)) => Param { name: trim(name), value: Some(trim(value)) },
                None => Param { name: item, value: None },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolon_params_trim_lws_and_keep_quotes() {
        let params = Params::semicolon(" ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33");
        let all: Vec<_> = params.iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], Param { name: "newparam", value: Some("newvalue") });
        assert_eq!(all[1], Param { name: "secondparam", value: None });
        assert_eq!(params.value("Q"), Some("0.33"));
    }

    #[test]
    fn comma_params_split_outside_quotes() {
        let params = Params::comma(r#"username="bob, jr", realm="x", nc=00000001"#);
        assert_eq!(params.value("username"), Some("bob, jr"));
        assert_eq!(params.value("nc"), Some("00000001"));
        assert_eq!(params.iter().count(), 3);
    }
}
