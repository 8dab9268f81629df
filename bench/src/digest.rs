//! HTTP Digest for SIP (RFC 3261 §22.4 over RFC 2617, MD5, with or without
//! `qop=auth`): the UAC answers a 401/407 challenge, the UAS challenges and
//! checks.

use md5::{Digest, Md5};
use sipshard_parser::Auth;

/// A user name and password (`--auth user:password`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::str::FromStr for Credentials {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                Ok(Credentials { user: user.to_owned(), password: password.to_owned() })
            }
            _ => Err(format!("expected USER:PASSWORD, got {s:?}")),
        }
    }
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The `response` value for `method` on `uri`.
fn response(
    credentials: &Credentials,
    realm: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = md5_hex(&format!("{}:{realm}:{}", credentials.user, credentials.password));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// The credentials header value answering `challenge` (a WWW-Authenticate or
/// Proxy-Authenticate value), or `None` when it is not an MD5 Digest challenge.
pub fn answer(challenge: &str, credentials: &Credentials, method: &str, uri: &str, cnonce: &str) -> Option<String> {
    let auth = Auth::parse(challenge).ok()?;
    if !auth.is_digest() || auth.param("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("MD5")) {
        return None;
    }
    let realm = auth.param("realm")?;
    let nonce = auth.param("nonce")?;
    let qop_auth = auth.param("qop").is_some_and(|q| q.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")));
    let nc = "00000001";
    let digest = response(credentials, realm, nonce, method, uri, qop_auth.then_some((nc, cnonce)));
    let mut value = format!(
        "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{digest}\", algorithm=MD5",
        credentials.user
    );
    if qop_auth {
        value += &format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\"");
    }
    if let Some(opaque) = auth.param("opaque") {
        value += &format!(", opaque=\"{opaque}\"");
    }
    Some(value)
}

/// Whether `authorization` (an Authorization value) proves `credentials` for `method`
/// against the challenge with `realm` and `nonce`.
pub fn verify(authorization: &str, credentials: &Credentials, realm: &str, nonce: &str, method: &str) -> bool {
    let Ok(auth) = Auth::parse(authorization) else { return false };
    let field = |name: &str| auth.param(name).unwrap_or_default();
    if !auth.is_digest() || field("username") != credentials.user || field("realm") != realm || field("nonce") != nonce
    {
        return false;
    }
    let qop = (field("qop") == "auth").then(|| (field("nc"), field("cnonce")));
    response(credentials, realm, nonce, method, field("uri"), qop) == field("response")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5's worked example (HTTP, but the same arithmetic).
    #[test]
    fn rfc_2617_example_response() {
        let credentials = Credentials { user: "Mufasa".into(), password: "Circle Of Life".into() };
        let got = response(
            &credentials,
            "testrealm@host.com",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "GET",
            "/dir/index.html",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(got, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn an_answer_verifies_and_a_wrong_password_does_not() {
        let challenge = "Digest realm=\"sipbench\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5";
        let alice = Credentials { user: "alice".into(), password: "secret".into() };
        let value = answer(challenge, &alice, "REGISTER", "sip:127.0.0.1:5060", "c0ffee").expect("an MD5 challenge");
        assert!(verify(&value, &alice, "sipbench", "abc123", "REGISTER"));
        let mallory = Credentials { user: "alice".into(), password: "guess".into() };
        let wrong = answer(challenge, &mallory, "REGISTER", "sip:127.0.0.1:5060", "c0ffee").expect("answer");
        assert!(!verify(&wrong, &alice, "sipbench", "abc123", "REGISTER"));
        assert!(answer("Basic realm=\"x\"", &alice, "REGISTER", "sip:x", "c").is_none());
    }

    #[test]
    fn credentials_need_a_user_and_a_colon() {
        assert_eq!("bob:pw".parse(), Ok(Credentials { user: "bob".into(), password: "pw".into() }));
        assert!("bob".parse::<Credentials>().is_err());
        assert!(":pw".parse::<Credentials>().is_err());
    }
}
