//! Request methods. Methods are case-sensitive (RFC 3261 §7.1); anything that
//! is not a known method is an extension method carried as written.

use core::fmt;

/// A SIP request method.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    /// INVITE (RFC 3261)
    Invite,
    /// ACK (RFC 3261)
    Ack,
    /// BYE (RFC 3261)
    Bye,
    /// CANCEL (RFC 3261)
    Cancel,
    /// REGISTER (RFC 3261)
    Register,
    /// OPTIONS (RFC 3261)
    Options,
    /// INFO (RFC 6086)
    Info,
    /// UPDATE (RFC 3311)
    Update,
    /// PRACK (RFC 3262)
    Prack,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// NOTIFY (RFC 6665)
    Notify,
    /// MESSAGE (RFC 3428)
    Message,
    /// REFER (RFC 3515)
    Refer,
    /// PUBLISH (RFC 3903)
    Publish,
    /// Any other token.
    Extension(&'a str),
}

impl<'a> Method<'a> {
    /// Maps a method token to the method (case-sensitive).
    pub fn from_token(token: &'a str) -> Method<'a> {
        Method::known(token.as_bytes()).unwrap_or(Method::Extension(token))
    }

    /// The standard method these octets spell (case-sensitive), `None` for any other token:
    /// the parser recognises the usual methods without a UTF-8 check.
    pub(crate) fn known(token: &[u8]) -> Option<Method<'static>> {
        match token {
            b"INVITE" => Some(Method::Invite),
            b"ACK" => Some(Method::Ack),
            b"BYE" => Some(Method::Bye),
            b"CANCEL" => Some(Method::Cancel),
            b"REGISTER" => Some(Method::Register),
            b"OPTIONS" => Some(Method::Options),
            b"INFO" => Some(Method::Info),
            b"UPDATE" => Some(Method::Update),
            b"PRACK" => Some(Method::Prack),
            b"SUBSCRIBE" => Some(Method::Subscribe),
            b"NOTIFY" => Some(Method::Notify),
            b"MESSAGE" => Some(Method::Message),
            b"REFER" => Some(Method::Refer),
            b"PUBLISH" => Some(Method::Publish),
            _ => None,
        }
    }

    /// The method as written on the wire.
    pub fn as_str(&self) -> &'a str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Message => "MESSAGE",
            Method::Refer => "REFER",
            Method::Publish => "PUBLISH",
            Method::Extension(token) => token,
        }
    }
}

impl fmt::Display for Method<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn standard_methods_are_known_by_their_octets_and_case_matters() {
        let all = [
            Method::Invite,
            Method::Ack,
            Method::Bye,
            Method::Cancel,
            Method::Register,
            Method::Options,
            Method::Info,
            Method::Update,
            Method::Prack,
            Method::Subscribe,
            Method::Notify,
            Method::Message,
            Method::Refer,
            Method::Publish,
        ];
        for method in all {
            assert_eq!(Method::known(method.as_str().as_bytes()), Some(method));
            assert_eq!(Method::from_token(method.as_str()), method);
            let lower = method.as_str().to_ascii_lowercase();
            assert_eq!(Method::known(lower.as_bytes()), None, "{lower}");
            assert_eq!(Method::from_token(&lower), Method::Extension(&lower));
        }
        assert_eq!(Method::known(b"INVITEX"), None);
        assert_eq!(Method::from_token("FOO"), Method::Extension("FOO"));
    }
}
